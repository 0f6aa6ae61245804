"""One model over one input: the steps in order, the report, the output layout, progress."""
