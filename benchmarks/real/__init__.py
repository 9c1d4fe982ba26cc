"""Real pretrained models, real parallel text and real MT, installed from package registries into a cache outside the
repository (`assets.py`), a cross-lingual task built from the Bible (`bible.py`) and `make bench-real` (`run.py`).
Nothing here commits weights or Bible text: both live under ${FLARE_XLT_CACHE:-~/.cache/flare-xlt}/real.
"""
