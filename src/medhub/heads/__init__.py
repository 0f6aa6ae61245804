"""Few-shot heads: small scikit-learn classifiers on a foundation encoder's embeddings, as catalog models.

``medhub heads train`` embeds labelled series with an encoder (``ct-fm-astra``), cross-validates
and fits a head (:mod:`medhub.heads.train`), and saves it as a model folder
(:mod:`medhub.heads.model`) under the heads root (:mod:`medhub.heads.registry`), which the
catalog lists like any model (:mod:`medhub.heads.source`), so ``medhub run NAME`` applies it with the generic runner
(:mod:`medhub.heads.runner`) and writes probabilities as JSON, CSV and DICOM SR
(:mod:`medhub.writers.values`).
"""
