"""Evaluation metrics: classification (AUROC, max-F1), segmentation (Dice), detection (mAP), grounding,
statistics.

Every function accepts numpy arrays or torch tensors and returns python floats (or dicts of them). Where the
published numbers were measured with quirky metric code, both the ``reference`` form (reproducing the quirk)
and a ``strict`` form exist; tables say which one they show.
"""
