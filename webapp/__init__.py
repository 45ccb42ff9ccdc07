"""The web app (``landslide app``): a Streamlit front end over the same scan command, run folders,
regional inventories and the review loop. Streamlit is imported only by ``webapp/app.py``; the rest
is plain Python that the tests call directly."""
