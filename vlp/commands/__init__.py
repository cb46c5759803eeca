"""Sub-commands of the ``vlp`` CLI, each registering its own parser; implementations are imported on use."""
