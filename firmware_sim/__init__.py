"""Simulators of every device kind, speaking the real protocols over real transports."""
