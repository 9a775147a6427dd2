"""mcm_core: mining minority-class examples with uncertainty estimates (Singh, Chu et al., MMM 2022).

Pure torch + numpy; never imports Label Studio. The method is covered by US patent 11,816,183 B2.
"""
from .miner import MinorityMiner

__all__ = ["MinorityMiner"]
__version__ = "0.1.0"
