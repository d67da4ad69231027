"""Conditions on a generated modality (first frame, prefix/suffix, reference, mask, spatial crop): `spec` reads and
checks them, `tokens` builds their clean tokens and reference positions for training and generation alike."""
