"""Offline fixtures for tests and the CPU demo: tiny random Qwen-VL models with the real Qwen vocabulary."""
