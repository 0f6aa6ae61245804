"""Models: cards, runners and the catalog that finds them."""
