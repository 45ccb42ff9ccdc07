"""Selenium helpers for Streamlit pages: find widgets by their visible label, as a person does."""

from __future__ import annotations

import re
import time

from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys


def wait_for(predicate, timeout_s: float = 60.0, poll_s: float = 0.3, what: str = "the page"):
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (StaleElementReferenceException, WebDriverException) as exc:
            last = exc
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f" ({last})" if last else ""))


def idle(driver, timeout_s: float = 60.0) -> None:
    """Wait until Streamlit finished running the script (no 'running' status widget)."""
    time.sleep(0.4)
    wait_for(lambda: not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'),
             timeout_s, what="the script run to finish")


def widget(driver, testid: str, label: str):
    """The ``data-testid=testid`` block whose visible text starts with ``label``."""
    def find():
        for el in driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]'):
            if el.text.strip().startswith(label) or (testid == "stExpander" and label in el.text):
                return el
        return None
    return wait_for(find, 30, what=f"{testid} {label!r}")


def type_text(driver, label: str, value: str) -> None:
    box = widget(driver, "stTextInput", label).find_element(By.TAG_NAME, "input")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.ENTER)
    idle(driver)


def button(driver, text: str, testid: str = "stButton", tag: str = "button"):
    def find():
        for el in driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"] {tag}'):
            if el.text.strip().splitlines()[-1:] == [text] and el.is_enabled():
                return el
        return None
    return wait_for(find, 60, what=f"the button {text!r}")


def click(driver, text: str, testid: str = "stButton", tag: str = "button") -> None:
    button(driver, text, testid, tag).click()
    idle(driver)


def set_checkbox(driver, label: str, checked: bool) -> None:
    box = widget(driver, "stCheckbox", label)
    current = box.find_element(By.TAG_NAME, "input").is_selected()
    if current != checked:
        box.find_element(By.TAG_NAME, "label").click()
        idle(driver)


def choose(driver, label: str, option: str) -> None:
    """Pick ``option`` (its visible text starts with it) in the selectbox labelled ``label``."""
    box = widget(driver, "stSelectbox", label)
    field = box.find_element(By.CSS_SELECTOR, 'input[role="combobox"]')
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(option)

    def find():
        for el in driver.find_elements(By.CSS_SELECTOR, '[role="option"]'):
            if el.text.strip().startswith(option):
                return el
        return None
    wait_for(find, 10, what=f"the option {option!r}").click()
    idle(driver)


def radio(driver, label: str, option: str) -> None:
    box = widget(driver, "stRadio", label)
    for el in box.find_elements(By.TAG_NAME, "label"):
        if el.text.strip().startswith(option):
            el.click()
            idle(driver)
            return
    raise AssertionError(f"no option {option!r} in the radio {label!r}")


def page_text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def map_view(driver) -> dict[str, float]:
    """The view the results map was drawn with, from its caption."""
    m = re.search(r"Map view: ([\d.-]+) N, ([\d.-]+) E, zoom ([\d.]+)", page_text(driver))
    assert m, "no map view caption on the page"
    return {"latitude": float(m[1]), "longitude": float(m[2]), "zoom": float(m[3])}


def open_app(driver, url: str, heading: str, timeout_s: float = 60.0) -> None:
    """Load the app and wait for the page whose title is ``heading``."""
    driver.get(url)
    wait_for(lambda: any(h.text.strip() == heading for h in driver.find_elements(By.TAG_NAME, "h1")),
             timeout_s, what=f"the page {heading!r}")
    idle(driver)


def click_at(driver, element, x_px: float, y_px: float) -> None:
    """A real mouse click (move, press, release through the DevTools protocol) at pixel (x, y) of
    ``element``, e.g. a point of a map canvas."""
    left, top = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top];", element)
    where = dict(x=left + x_px, y=top + y_px, button="left", clickCount=1)
    driver.execute_cdp_cmd("Input.dispatchMouseEvent", dict(type="mouseMoved", buttons=0, **where))
    time.sleep(1.0)  # deck.gl picks on hover first
    driver.execute_cdp_cmd("Input.dispatchMouseEvent", dict(type="mousePressed", buttons=1, **where))
    time.sleep(0.05)
    driver.execute_cdp_cmd("Input.dispatchMouseEvent", dict(type="mouseReleased", buttons=0, **where))
    idle(driver)


def click_map(driver, x_px: float, y_px: float, done, what: str, index: int = 0, tries: int = 4,
              testid: str = "stDeckGlJsonChart") -> None:
    """Click pixel (x, y) of the ``index``-th map (or other canvas widget) on the page until
    ``done()`` holds: deck.gl ignores clicks that come before it has drawn and picked, which a
    person never notices."""
    for _ in range(tries):
        deck = driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')[index]
        click_at(driver, deck, x_px, y_px)
        try:
            wait_for(done, 8, what=what)
            return
        except AssertionError:
            continue
    raise AssertionError(f"{tries} clicks on the map did not give {what}")


def selectbox_text(driver, label: str) -> str:
    """The option a selectbox shows (the value of its combobox input)."""
    box = widget(driver, "stSelectbox", label)
    return box.find_element(By.CSS_SELECTOR, 'input[role="combobox"]').get_attribute("value") or ""


def type_date(driver, label: str, value: str) -> None:
    """Type a date (``YYYY-MM-DD``) into the date field labelled ``label``: its year, month and day
    segments take the digits in turn, and Tab commits it."""
    field = widget(driver, "stDateInput", label)
    field.find_element(By.CSS_SELECTOR, '[data-type="year"]').click()
    year, month, day = value.split("-")
    for segment, digits in (("year", year), ("month", month), ("day", day)):
        field.find_element(By.CSS_SELECTOR, f'[data-type="{segment}"]').send_keys(digits)
    field.find_element(By.CSS_SELECTOR, '[data-type="day"]').send_keys(Keys.TAB)
    idle(driver)
