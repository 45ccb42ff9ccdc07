"""One scan run: the validated plan (``plan``), its steps (``steps``) and the run folder
(``outputs``: staging, COGs, manifest, atomic publish)."""
