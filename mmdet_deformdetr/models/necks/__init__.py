from .bifpn import BiFPNNeck

__all__ = ['BiFPNNeck']
