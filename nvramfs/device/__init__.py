"""The device model: prices what mm moves on a medium (time and wear); decides nothing."""

from .media import BUILTIN, DEFAULT_MEDIUM, KernelCosts, Medium, kernel_costs, load_medium
from .model import KINDS, DeviceModel

__all__ = [
    "BUILTIN",
    "DEFAULT_MEDIUM",
    "KINDS",
    "DeviceModel",
    "KernelCosts",
    "Medium",
    "kernel_costs",
    "load_medium",
]
