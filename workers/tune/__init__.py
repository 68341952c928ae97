"""The Ray Tune side of regtune: spec -> Tune/Optuna objects, the trainable, the driver.

Only this subpackage imports ray. ``workers.training`` stays plain PyTorch.
"""
