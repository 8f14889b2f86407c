"""Verdicts on a candidate generation: program, health probe, sd_notify, memory."""
