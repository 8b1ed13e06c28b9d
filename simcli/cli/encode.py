"""Commands of this stage are registered here (module under construction)."""
