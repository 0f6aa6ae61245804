"""The data model: series and instances (headers), volumes, predictions, geometry."""
