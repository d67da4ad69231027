"""Training: flow matching math, conditioning, optimizers and schedules, the trainer loop, checkpoints."""
