"""The model hub: cards, the catalog, runners and their runtime, workflows, weights, environments."""
