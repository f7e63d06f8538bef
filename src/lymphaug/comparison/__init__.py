"""Everything the ``compare`` stage computes and draws.

- :mod:`.results`: reads the training stage's per-run outputs (its contract);
- :mod:`.stats`: bootstrap CIs, paired t, Wilcoxon, McNemar, effect sizes, verdicts;
- :mod:`.analysis`: those statistics for every condition against ``base``, once;
- :mod:`.features`: the image feature extractor (ImageNet weights or the base classifier);
- :mod:`.image_metrics`: FID, KID, nearest-neighbour distances, the linear probe;
- :mod:`.synthetic_quality`: those metrics applied to the synthetic set;
- :mod:`.figures`: the report's plots; :mod:`.report`: the markdown report;
- :mod:`.report_html`: that report as one self-contained page for MLflow.
"""
