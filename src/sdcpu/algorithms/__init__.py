"""Algorithm steps that cut the work itself: DeepCache, a tiny VAE decoder."""
