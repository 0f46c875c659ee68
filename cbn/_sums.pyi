# Stubs for src/_sums.pyx: exact fixed-point sums of float64 values across
# processes, and the statistics SyncBatchNorm draws from them.
import numpy as np

LIMB_BITS: int
MAX_PROCESSES: int
LOWEST_TOP: int
HIGHEST_TOP: int
ROUNDING: float

def encode(values: np.ndarray, tops: np.ndarray, limbs: np.ndarray) -> bool: ...
def encode_shard(count: float, mean: np.ndarray, m2: np.ndarray, within: np.ndarray,
                 shift: np.ndarray, tops: np.ndarray, nonfinite: np.ndarray,
                 limbs: np.ndarray) -> bool: ...
def fingerprint(shift: np.ndarray, tops: np.ndarray, nonfinite: np.ndarray) -> int: ...
def decode(limbs: np.ndarray, tops: np.ndarray, values: np.ndarray) -> None: ...
def tops_for(bounds: np.ndarray, headroom_bits: int, tops: np.ndarray) -> None: ...
def statistics(shift: np.ndarray, count: float, senders: float, sums: np.ndarray,
               tops: np.ndarray, nonfinite: np.ndarray, target: float, headroom_bits: int,
               mean: np.ndarray, m2: np.ndarray, errors: np.ndarray,
               next_tops: np.ndarray) -> bool: ...
