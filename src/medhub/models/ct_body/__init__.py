"""ct-body: algorithmic (threshold-based) body / lung / bone reference model for CT."""
