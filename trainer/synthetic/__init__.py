"""The synthetic world the tests, demos and benchmarks run in, apart from the training engine.

Tiny offline pipelines of every family (`tiny`), the captioned shapes domain they can be pre-trained on
(`shapes`, `shape_autoencoder`, `pretrain`), the judge of what they draw (`shape_samples`), preference
datasets drawn from that domain (`shape_preferences`, `demo_data`) and the shipped pre-trained bases
(`base_models`). Nothing in the engine imports from here.
"""
