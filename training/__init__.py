"""Training: one model-agnostic loop over every registered family (see ``genlab.training.loop``)."""
