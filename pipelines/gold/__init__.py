"""Gold transforms: pure functions over silver events or gold sessions."""
