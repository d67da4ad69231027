"""Trainable networks on top of the frozen transformer; `lora_ltx2` is the default `--network_module`."""
