"""Zero-shot classification: prompt-ensembled classifiers from class names × templates, with AutoCLIP."""
from vlp.zeroshot.classifier import (TEMPLATE_SETS, ClassifierCache, ZeroShotClassifier, autoclip_template_weights,
                                     build_classifier, embed_prompts, ensemble, resolve_templates, template_set)

__all__ = ["TEMPLATE_SETS", "ClassifierCache", "ZeroShotClassifier", "autoclip_template_weights",
           "build_classifier", "embed_prompts", "ensemble", "resolve_templates", "template_set"]
