"""The offline embedded default (``make quickstart``) and nothing else: demo-only parts the core never imports.

- ``synth_digits``: renders captioned synthetic 8x8 digits from strokes and fonts;
- ``teacher_pretrain``: contrastive pretraining of a tiny open_clip teacher on them;
- ``digits_pipeline``: shard -> embed -> pseudolabel of scikit-learn's real digits, the student runs and
  the printed table, wired together by the ``quickstart`` stage (``zmdist/stages/quickstart.py``).

The demo imports the core (stages, ``zmdist.data.sklearn_digits``); the core never imports the demo.
"""
