"""Stage 2: peaks and hashes (landmarks): which recording, where in it,
at what speed.

This module turns audio into *landmarks*: hashed pairs of spectrogram
peaks, each tied to the time of its first peak. The local index
(:mod:`.local`) and the server index (:mod:`.server`) store the landmarks
of every library track; :mod:`.match` matches clips against them.

Peak picking (the constellation)
    A peak is a point that is the maximum of its neighbourhood (+-3 frames,
    +-8 bins) *and* stands out above the local mean of the log spectrogram
    (a box of about 1 s by 330 Hz): the local mean removes the slope of
    pink noise, hum and the overall loudness, so the same notes win whether
    the clip is quiet, loud, noisy or band-limited. Salience (height above
    the local mean) ranks peaks, and each 0.5 s block keeps only its most
    salient ones. That *density* is the main knob: the reference keeps few
    peaks (:data:`.params.REF_DENSITY` per second) so the index stays small
    and random collisions stay rare; the query keeps several times more
    (:data:`.params.QUERY_DENSITY`), so the reference's peaks are among the
    query's even when noise adds strong spurious peaks. Every choice is
    local in time and frequency, so a 5 s clip picks the same peaks as the
    whole track does around that place. Peaks are only taken between 250
    and 3500 Hz, the band a telephone keeps, so a clip recorded over a
    phone line still finds the peaks the reference has; it is also the
    band where music keeps its tonal structure under noise.

Hashes (landmarks)
    Each anchor peak is paired with the next few peaks in a target zone
    1..63 frames (32 ms .. 2 s) later and within +-127 bins (+-1 kHz). The
    23-bit hash packs anchor bin (9 bits), bin difference (8 bits) and frame
    difference (6 bits). The reference pairs each anchor with
    :data:`.params.REF_FANOUT` targets, the query with
    :data:`.params.QUERY_FANOUT`, again so the reference's pairs are among
    the query's.

Frame shifts
    The clip's frames start anywhere between two reference frames; the query
    is analysed at :data:`.params.QUERY_SHIFTS` sub-hop offsets, so one
    analysis is always within a quarter of a hop of the reference grid.

Speed-invariant keys (the search)
    A clip played fast by a factor ``s`` has every frequency multiplied by
    ``s`` and every time divided by ``s``: exact hashes break beyond about
    0.5 %. Every landmark also has a *key* (:func:`landmark_keys`) made of
    what a speed change leaves alone: the log frequency ratio of its two
    peaks and the log of anchor frequency times time difference, plus the
    anchor's log frequency in 1 % bands. The index is searched by keys: a
    clip looks up every band its anchors can come from over the speeds
    searched (:func:`query_keys`), and each hit says its speed (the clip's
    anchor frequency over the band's), so one search covers +-8.5 %. The
    keys need the peaks' frequencies to a fraction of a bin, so a stored
    landmark word keeps, above its hash, where each peak sits between two
    bins (:data:`.params.FINE_BITS` each).

Exact hashes at the read-back speed (the verdict)
    Verification hashes the clip's dense peaks (found once, with sub-bin
    precision) at the speeds the keys read back: frequencies divided by
    ``s`` and times multiplied by ``s`` before pairing
    (:func:`query_landmarks`), which lines them up with the reference's
    exact hashes.

Verification compares peaks rather than pairs (:func:`peak_cover`): the
stored hashes give back the reference's peaks (:func:`landmark_peaks`).

What the index stores of a track
    A track's landmarks are a pure function of its peaks
    (:func:`pair_peaks`), and a track has about a fifth as many peaks as
    landmarks: the local index keeps the peaks (frame, bin and sub-bin
    code, :func:`pack_peaks`) as the copy verification reads, and pairs
    them again when it reads them, the same words to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import distinct, multiplicative_hash
from .params import (
    BIN_HI,
    BIN_LO,
    BLOCK_FRAMES,
    COVER_BINS,
    COVER_FRAMES,
    DF_MAX,
    DT_MAX,
    DT_MIN,
    FINE_BITS,
    FINE_STEPS,
    FRAME_SECONDS,
    HASH_BITS,
    HOP,
    KEY_BAND,
    KEY_PRODUCT_CELL,
    KEY_PRODUCT_ERROR,
    KEY_RATIO_CELL,
    KEY_RATIO_ERROR,
    KEY_SPEED_CELL,
    MAX_FRAMES,
    MEAN_BOX,
    MIN_SALIENCE,
    N_FFT,
    NO_KEY,
    PEAK_BITS,
    PEAK_HALF_F,
    PEAK_HALF_T,
    QUERY_DENSITY,
    QUERY_FANOUT,
    QUERY_SHIFTS,
    REF_DENSITY,
    REF_FANOUT,
)
from .spectrum import log_spectrogram, max_filter, to_analysis_rate, uniform_filter


@dataclass
class Landmarks:
    """Hashes of one recording with the frame time of each anchor.

    ``hashes`` holds uint32 landmark *words*: the exact hash in the low
    :data:`.params.HASH_BITS` (:func:`pack_hash`), above it the sub-bin
    positions of its two peaks (:func:`pack_word`). ``times`` are uint32
    frames of :data:`FRAME_SECONDS`; both are in time order.
    """

    hashes: np.ndarray
    times: np.ndarray
    #: Length of the analysed audio in frames.
    n_frames: int
    #: The peaks the landmarks pair (:func:`pack_peaks`, in (frame, bin)
    #: order) when known: what the local index stores of a track.
    peaks: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.hashes.size)

    def stored_peaks(self) -> np.ndarray:
        """The packed peaks an index keeps of the recording: ``peaks`` when
        known, else those its landmarks (before :data:`.params.MAX_FRAMES`)
        pair (:func:`peaks_of`)."""
        if self.peaks is not None:
            return self.peaks
        times = np.asarray(self.times, np.uint32)
        keep = times < MAX_FRAMES
        return peaks_of(np.asarray(self.hashes, np.uint32)[keep], times[keep])

    @property
    def keys(self) -> np.ndarray:
        """The speed-invariant key of every landmark (:func:`landmark_keys`)."""
        return landmark_keys(self.hashes)


@dataclass
class QueryLandmarks:
    """A clip's hashes for every speed hypothesis.

    Entry ``i`` says: if the clip runs at ``speeds[speed_index[i]]``, a
    reference pair with hash ``hashes[i]`` should sit at reference frame
    ``ref_time[i] + offset``, where ``offset`` is where the clip starts.
    ``ref_time`` is the anchor's clip time already mapped to reference
    frames (``t * s``), so votes for the true offset agree across the clip.
    """

    hashes: np.ndarray  # uint32
    ref_time: np.ndarray  # float32, reference frames
    speed_index: np.ndarray  # uint8 index into ``speeds``
    speeds: tuple
    #: Clip length in reference frames at speed 1.
    n_frames: int


@dataclass
class QueryKeys(QueryLandmarks):
    """A clip's speed-invariant keys (``hashes``), as a query of the index.

    Each entry is one key of one clip pair looked up in one frequency
    band: ``entry_speed`` is the speed that band implies (clip anchor
    frequency over the band's centre), ``clip_time`` the anchor's clip
    frame, ``ref_time`` that frame at the entry's speed, and
    ``speed_index`` the entry's cell of :data:`.params.KEY_SPEED_CELL`
    (``speeds`` holds the cells' centres).
    """

    entry_speed: np.ndarray = None  # float32
    clip_time: np.ndarray = None  # float32, clip frames


def _peaks(logspec: np.ndarray, density: int, t_first: int, t_last: int, t_base: int = 0):
    """Constellation of ``logspec``: (frame, bin offset from BIN_LO, sub-bin
    refinement, salience) of the kept peaks with ``t_first <= frame < t_last``.

    Frames outside that range are context only (chunk margins); ``t_base``
    is the chunk's first frame in the recording, so density blocks line up
    across chunks.
    """
    if logspec.shape[0] == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, np.float32), np.zeros(0, np.float32)
    local_max = max_filter(logspec, PEAK_HALF_T, PEAK_HALF_F)
    local_mean = uniform_filter(logspec, MEAN_BOX)
    salience = logspec - local_mean
    is_peak = (logspec == local_max) & (salience > MIN_SALIENCE)
    # Peaks on the band edge are half-seen maxima; drop them.
    is_peak[:, 0] = False
    is_peak[:, -1] = False
    is_peak[:t_first] = False
    is_peak[t_last:] = False
    t, f = np.nonzero(is_peak)
    sal = salience[t, f]
    # Parabolic interpolation of the log spectrum around the peak bin: the
    # true frequency to a fraction of a bin, which the speed search needs.
    a, b, c = logspec[t, f - 1], logspec[t, f], logspec[t, f + 1]
    den = a - 2 * b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(den < 0, 0.5 * (a - c) / den, 0.0)
    frac = np.clip(frac, -0.5, 0.5).astype(np.float32)
    # Keep the `per_block` most salient peaks of every block of frames.
    per_block = max(1, int(round(density * BLOCK_FRAMES * FRAME_SECONDS)))
    block = (t + t_base) // BLOCK_FRAMES
    order = np.lexsort((-sal, block))
    block_sorted = block[order]
    first = np.searchsorted(block_sorted, block_sorted, side="left")
    rank = np.arange(order.size) - first
    keep = np.sort(order[rank < per_block])
    return t[keep], f[keep], frac[keep], sal[keep]


def find_peaks(x: np.ndarray, density: int, start: int = 0, chunk_frames: int = 4096):
    """Peaks of analysis-rate audio ``x`` with frames starting at sample ``start``.

    Returns (frame, bin, sub-bin refinement) arrays in time order, with bins
    counted from BIN_LO. Long recordings are processed in chunks with margins
    wider than every filter, so memory stays bounded and the result is the
    same as for one pass.
    """
    n_total = 1 + (len(x) - start - N_FFT) // HOP if len(x) - start >= N_FFT else 0
    margin = max(MEAN_BOX[0], 2 * PEAK_HALF_T + 1, BLOCK_FRAMES)
    ts, fs, fr = [], [], []
    for c0 in range(0, max(n_total, 0), chunk_frames):
        c1 = min(n_total, c0 + chunk_frames)
        a = max(0, c0 - margin)
        b = min(n_total, c1 + margin)
        seg = x[start + a * HOP: start + (b - 1) * HOP + N_FFT]
        spec = log_spectrogram(seg)
        t, f, frac, _ = _peaks(spec, density, c0 - a, c1 - a, t_base=a)
        ts.append(t + a)
        fs.append(f)
        fr.append(frac)
    if not ts:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, np.float32)
    return np.concatenate(ts), np.concatenate(fs), np.concatenate(fr)


def pairs(t: np.ndarray, f: np.ndarray, fanout: int, lookahead: int, dt_min: float = DT_MIN,
          dt_max: float = DT_MAX, df_max: float = DF_MAX):
    """Index pairs (anchor, target) of peaks sorted by time: each anchor with
    its first ``fanout`` later peaks inside the target zone (``dt_min`` to
    ``dt_max`` frames later, at most ``df_max`` bins away), among the next
    ``lookahead`` peaks; anchors in order, each one's targets in order."""
    n = t.size
    if n < 2:
        e = np.zeros(0, np.int64)
        return e, e
    # Peaks past the end sit beyond dt_max of every anchor.
    t_pad = np.concatenate([t, np.full(lookahead, t.max() + dt_max + 1, t.dtype)])
    f_pad = np.concatenate([f, np.zeros(lookahead, f.dtype)])
    if n <= PAIRS_IN_ONE_STEP:
        # A clip's few peaks: every (anchor, k-th next peak) in one 2-D step.
        j = np.arange(n)[:, None] + np.arange(1, lookahead + 1)[None, :]
        dt = t_pad[j] - t[:, None]
        ok = (dt >= dt_min) & (dt <= dt_max) & (np.abs(f_pad[j] - f[:, None]) <= df_max)
        ok &= np.cumsum(ok, axis=1) <= fanout
        ii, kk = np.nonzero(ok)
        return ii, ii + kk + 1
    # A track's thousands: the k-th next peak of every anchor at once, for
    # k = 1..lookahead, in whole-array steps of length n.
    ok = np.empty((lookahead, n), bool)
    taken = np.zeros(n, np.int16)
    for k in range(lookahead):
        dt = t_pad[k + 1:k + 1 + n] - t
        ok[k] = ((dt >= dt_min) & (dt <= dt_max) & (np.abs(f_pad[k + 1:k + 1 + n] - f) <= df_max)
                 & (taken < fanout))
        taken += ok[k]
    ii, kk = np.nonzero(ok.T)
    return ii, ii + kk + 1


#: Peaks up to which :func:`pairs` takes one 2-D step; beyond, a step per
#: lookahead is cheaper (measured: about 400 peaks with a lookahead of
#: 48, 700 with 20).
PAIRS_IN_ONE_STEP = 512


def pack_hash(f1: np.ndarray, df: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """23-bit landmark hash: anchor bin (9) | bin difference + 128 (8) | frames (6)."""
    return ((f1.astype(np.uint32) & 0x1FF) << 14) | (((df + 128).astype(np.uint32) & 0xFF) << 6) | (
        dt.astype(np.uint32) & 0x3F
    )


def fine_code(frac: np.ndarray) -> np.ndarray:
    """A peak's sub-bin position (-0.5..0.5 bin) in FINE_BITS: steps of
    1/FINE_STEPS bin, two's complement."""
    q = np.clip(np.rint(np.asarray(frac, np.float64) * FINE_STEPS), -(FINE_STEPS // 2), FINE_STEPS // 2)
    return q.astype(np.int64) & FINE_STEPS


def fine_value(code: np.ndarray) -> np.ndarray:
    """The sub-bin position (bins) a :func:`fine_code` stands for."""
    code = np.asarray(code, np.int64)
    return np.where(code > FINE_STEPS // 2, code - (1 << FINE_BITS), code) / FINE_STEPS


def pack_word(hashes: np.ndarray, fine_anchor: np.ndarray, fine_target: np.ndarray) -> np.ndarray:
    """Landmark words: the hash, then the anchor's and the target's
    sub-bin codes above it."""
    return (np.asarray(hashes, np.uint32)
            | (np.asarray(fine_anchor, np.uint32) << np.uint32(HASH_BITS))
            | (np.asarray(fine_target, np.uint32) << np.uint32(HASH_BITS + FINE_BITS)))


def pair_keys(band: np.ndarray, ratio: np.ndarray, product: np.ndarray) -> np.ndarray:
    """Keys (uint32 below 2**HASH_BITS, never NO_KEY) of (anchor band,
    cell of ``ln(f_b/f_a)``, cell of ``ln(f_a dt)``), folded by
    multiplicative hashing."""
    raw = ((np.asarray(band, np.int64) << 24) | ((np.asarray(ratio, np.int64) + 2048) << 12)
           | (np.asarray(product, np.int64) + 2048)).astype(np.uint64)
    key = multiplicative_hash(raw, HASH_BITS).astype(np.uint32)
    key[key == NO_KEY] = 1
    return key


def unpack_hash(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor bin from BIN_LO, bin difference, frame difference) of each
    landmark word or hash, int64: what :func:`pack_hash` packed."""
    w = np.asarray(words).astype(np.int64)
    return (w >> 14) & 0x1FF, ((w >> 6) & 0xFF) - 128, w & 0x3F


def landmark_keys(words: np.ndarray) -> np.ndarray:
    """The speed-invariant key of each landmark word (:data:`.params.NO_KEY`
    for a word that is no pair of peaks). A pure function of the word, so
    a stored landmark's key can be computed again from it."""
    w = np.asarray(words).astype(np.int64)
    anchor, df, dt = unpack_hash(w)
    f1 = anchor + BIN_LO + fine_value((w >> HASH_BITS) & FINE_STEPS)
    f2 = anchor + BIN_LO + df + fine_value((w >> (HASH_BITS + FINE_BITS)) & FINE_STEPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(f2 / f1)
        product = np.log(f1 * dt)
    ok = (dt > 0) & (f2 > 0)
    keys = np.full(w.size, NO_KEY, np.uint32)
    keys[ok] = pair_keys(np.floor(np.log(f1[ok]) / KEY_BAND), np.floor(ratio[ok] / KEY_RATIO_CELL),
                         np.floor(product[ok] / KEY_PRODUCT_CELL))
    return keys


def pack_peaks(t: np.ndarray, f: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Peaks as int64 (frame << PEAK_BITS | bin << FINE_BITS | sub-bin
    code): sorting them sorts by frame, then bin."""
    return ((np.asarray(t, np.int64) << PEAK_BITS) | (np.asarray(f, np.int64) << FINE_BITS)
            | (np.asarray(code, np.int64) & FINE_STEPS))


def unpack_peaks(peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame, bin from BIN_LO, sub-bin code) of packed peaks, int32."""
    p = np.asarray(peaks, np.int64)
    bins = (p >> FINE_BITS) & ((1 << (PEAK_BITS - FINE_BITS)) - 1)
    return (p >> PEAK_BITS).astype(np.int32), bins.astype(np.int32), (p & FINE_STEPS).astype(np.int32)


def pair_peaks(peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The landmark words and anchor frames (uint32, anchor order) of a
    track's packed peaks (:func:`pack_peaks`, sorted): each anchor paired
    with REF_FANOUT targets."""
    t, f, code = unpack_peaks(peaks)
    a, b = pairs(t, f, REF_FANOUT, lookahead=4 * REF_FANOUT)
    words = pack_word(pack_hash(f[a], f[b] - f[a], t[b] - t[a]), code[a], code[b])
    times = t[a]
    keep = times < MAX_FRAMES
    return words[keep], times[keep].astype(np.uint32)


def kept_apart(t: np.ndarray, run: np.ndarray) -> np.ndarray:
    """The frames ``t`` (not negative) of several runs one after another
    (``run``: each one's run number), each run moved past the one before
    by more than DT_MAX frames: :func:`pairs` then pairs each run as alone."""
    return t + run * (int(t.max(initial=0)) + DT_MAX + 1)


def pair_peak_runs(runs: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`pair_peaks` of each run of packed peaks, all paired in one
    call (a search pairs a few places of 16 candidates: one call each
    cost more in numpy's per-call overhead than in pairing), the runs
    :func:`kept_apart`."""
    if not runs:
        return []
    sizes = np.array([r.size for r in runs], np.int64)
    t, f, code = unpack_peaks(np.concatenate(runs))
    owner = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    a, b = pairs(kept_apart(t, owner), f, REF_FANOUT, lookahead=4 * REF_FANOUT)
    words = pack_word(pack_hash(f[a], f[b] - f[a], t[b] - t[a]), code[a], code[b])
    times = t[a]
    keep = times < MAX_FRAMES
    words, times, run = words[keep], times[keep].astype(np.uint32), owner[a[keep]]
    bounds = np.searchsorted(run, np.arange(sizes.size + 1))
    return [(words[i:j], times[i:j]) for i, j in zip(bounds[:-1].tolist(), bounds[1:].tolist())]


def peaks_of(words: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The packed peaks (sorted, each once) that landmarks pair: every
    anchor and target with its sub-bin code. For landmarks stored without
    their peaks (indexes before format 5); pairing them again gives the
    landmarks back, plus a few where a peak that no pair used had stood in
    an anchor's way."""
    w = np.asarray(words).astype(np.int64)
    f1, df, dt = unpack_hash(w)
    t = np.asarray(times).astype(np.int64)
    return distinct(np.concatenate([pack_peaks(t, f1, w >> HASH_BITS),
                                    pack_peaks(t + dt, f1 + df, w >> (HASH_BITS + FINE_BITS))]))


def reference_landmarks(samples: np.ndarray, sample_rate: int) -> Landmarks:
    """Landmarks of a whole library track (sparse: cheap to store and
    search), with the peaks they pair."""
    x = to_analysis_rate(samples, sample_rate)
    t, f, frac = find_peaks(x, REF_DENSITY)
    peaks = np.sort(pack_peaks(t, f, fine_code(frac)))
    hashes, times = pair_peaks(peaks)
    n_frames = max(0, 1 + (len(x) - N_FFT) // HOP)
    return Landmarks(hashes, times, int(n_frames), peaks)


@dataclass
class ClipPeaks:
    """A clip's constellation for each frame shift, found once per clip and
    hashed for as many speed hypotheses as the search needs."""

    #: shift -> (frame times, frequencies in fractional bins), time order
    by_shift: dict
    n_frames: int


def clip_peaks(samples: np.ndarray, sample_rate: int, shifts=QUERY_SHIFTS,
               density: int = QUERY_DENSITY) -> ClipPeaks:
    """The dense peaks of a clip at every frame shift in ``shifts``, with
    sub-bin frequencies (the speed search maps them)."""
    x = to_analysis_rate(samples, sample_rate)
    by_shift = {}
    for shift in shifts:
        t, f, frac = find_peaks(x, density, start=int(round(shift * HOP)))
        tq = t.astype(np.float64) + shift
        fq = f.astype(np.float64) + frac + BIN_LO
        order = np.lexsort((fq, tq))
        by_shift[shift] = (tq[order], fq[order])
    return ClipPeaks(by_shift, max(0, 1 + (len(x) - N_FFT) // HOP))


def query_keys(peaks: ClipPeaks, max_speed: float, shift: float = 0.0,
               fanout: int = QUERY_FANOUT) -> QueryKeys:
    """The speed-invariant keys a clip looks up to find its track at any
    speed between ``1 / max_speed`` and ``max_speed`` (one frame shift).

    Each clip pair is looked up in every band its anchor can come from
    over that range, and in the neighbouring cell of a quantity that lies
    within its measurement error of a cell border.
    """
    tq, fq = peaks.by_shift[shift]
    log_max = float(np.log(max_speed))
    a, b = pairs(tq, fq, fanout, 4 * fanout, dt_max=DT_MAX * max_speed, df_max=DF_MAX * max_speed)
    ratio = np.log(fq[b] / fq[a])
    product = np.log(fq[a] * (tq[b] - tq[a]))
    log_f = np.log(fq[a])
    lowest = np.floor((log_f - log_max) / KEY_BAND).astype(np.int64)
    highest = np.floor((log_f + log_max) / KEY_BAND).astype(np.int64)
    n_bands = int((highest - lowest).max(initial=-1)) + 1
    stride = max(n_bands, 1)  # entry = pair * stride + band number
    keys, entries = [], []
    pair_no = np.arange(a.size, dtype=np.int64)
    for k in range(n_bands):
        band = lowest + k
        inside = band <= highest
        for dr in (-KEY_RATIO_ERROR, KEY_RATIO_ERROR):
            for dp in (-KEY_PRODUCT_ERROR, KEY_PRODUCT_ERROR):
                keys.append(pair_keys(band[inside], np.floor((ratio[inside] + dr) / KEY_RATIO_CELL),
                                      np.floor((product[inside] + dp) / KEY_PRODUCT_CELL)))
                entries.append(pair_no[inside] * stride + k)
    if keys:
        # One entry per (key, pair, band): the border cells repeat keys.
        both = distinct((np.concatenate(keys).astype(np.uint64) << np.uint64(32))
                         | np.concatenate(entries).astype(np.uint64))
        key = (both >> np.uint64(32)).astype(np.uint32)
        entry = (both & np.uint64(0xFFFFFFFF)).astype(np.int64)
    else:
        key, entry = np.zeros(0, np.uint32), np.zeros(0, np.int64)
    pair, k = entry // stride, entry % stride
    band = lowest[pair] + k
    speed = np.exp(log_f[pair] - (band + 0.5) * KEY_BAND)
    clip_time = tq[a[pair]]
    n_cells = int(np.ceil(log_max / KEY_SPEED_CELL)) + 1
    cell = np.clip(np.rint(np.log(speed) / KEY_SPEED_CELL), -n_cells, n_cells).astype(np.int64)
    speeds = tuple(float(np.exp(c * KEY_SPEED_CELL)) for c in range(-n_cells, n_cells + 1))
    return QueryKeys(key, (clip_time * speed).astype(np.float32), (cell + n_cells).astype(np.uint8),
                     speeds, peaks.n_frames, entry_speed=speed.astype(np.float32),
                     clip_time=clip_time.astype(np.float32))


def query_landmarks(samples: np.ndarray | None, sample_rate: int | None, speeds,
                    shifts=QUERY_SHIFTS, density: int = QUERY_DENSITY,
                    fanout: int = QUERY_FANOUT, peaks: ClipPeaks | None = None) -> QueryLandmarks:
    """Dense landmarks of a clip for every speed in ``speeds``.

    Peaks are found once per frame shift (or taken from ``peaks``); for each
    speed hypothesis ``s`` their frequencies are divided by ``s`` and their
    times multiplied by ``s`` (undoing a clip that plays ``s`` times fast)
    before pairing and hashing, so the hashes line up with the reference's.
    """
    if peaks is None:
        peaks = clip_peaks(samples, sample_rate, shifts, density)
    hs, ts, ss = [], [], []
    scale = np.asarray(speeds, np.float64)[:, None]
    for shift in shifts:
        tq, fq = peaks.by_shift[shift]
        n = tq.size
        if n < 2:
            continue
        # Every speed's constellation, one after another, paired in one
        # call (:func:`kept_apart`: no pair joins two speeds).
        tr = (tq[None, :] * scale).ravel()
        fr = (np.rint(fq[None, :] / scale).astype(np.int64) - BIN_LO).ravel()
        tri = np.rint(tr).astype(np.int64)
        valid = (fr >= 0) & (fr < BIN_HI - BIN_LO)
        speed = np.repeat(np.arange(len(speeds), dtype=np.int64), n)
        a, b = pairs(kept_apart(tri, speed), np.where(valid, fr, -10_000), fanout, lookahead=4 * fanout)
        good = valid[a] & valid[b]
        a, b = a[good], b[good]
        hs.append(pack_hash(fr[a], fr[b] - fr[a], tri[b] - tri[a]))
        ts.append(tr[a].astype(np.float32))
        ss.append(speed[a].astype(np.uint8))
    n_frames = peaks.n_frames
    if not hs:
        return QueryLandmarks(np.zeros(0, np.uint32), np.zeros(0, np.float32), np.zeros(0, np.uint8), tuple(speeds), n_frames)
    return QueryLandmarks(np.concatenate(hs), np.concatenate(ts), np.concatenate(ss), tuple(speeds), n_frames)


def landmark_peaks(hashes: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The constellation behind landmarks: every anchor and target peak,
    each once, as (frame, bin counted from BIN_LO) in time order
    (:func:`peaks_of`, without the sub-bin codes).

    A hash holds its anchor's bin and the target's bin and frame
    differences (:func:`pack_hash`), so the stored landmarks give back the
    reference's peaks without its audio.
    """
    t, f, _ = unpack_peaks(peaks_of(hashes, times))
    return t.astype(np.int64), f.astype(np.int64)


def peak_cover(peaks: ClipPeaks, speed: float = 1.0) -> np.ndarray:
    """Where the clip has a peak, on the reference's grid: a boolean map
    (frame from the clip start, bin from BIN_LO) of the places a reference
    peak counts as present in the clip played at ``speed``, each of the
    clip's peaks (every frame shift) widened by COVER_FRAMES and
    COVER_BINS.

    Verification counts reference peaks rather than pairs: a pair
    survives noise only when both of its peaks do, so under babble or a
    cafe about half as many pairs as peaks come through.
    """
    n_bins = BIN_HI - BIN_LO
    n_frames = int(np.ceil(peaks.n_frames * speed)) + 1
    pad_t, pad_f = COVER_FRAMES, COVER_BINS
    hit = np.zeros((n_frames + 2 * pad_t, n_bins + 2 * pad_f), bool)
    for tq, fq in peaks.by_shift.values():
        t = np.rint(tq * speed).astype(np.int64)
        f = np.rint(fq / speed).astype(np.int64) - BIN_LO
        ok = (t >= 0) & (t < n_frames) & (f >= 0) & (f < n_bins)
        hit[t[ok] + pad_t, f[ok] + pad_f] = True
    cover = np.zeros_like(hit)
    for dt in range(-pad_t, pad_t + 1):
        for df in range(-pad_f, pad_f + 1):
            cover[pad_t:-pad_t, pad_f:-pad_f] |= hit[pad_t + dt: hit.shape[0] - pad_t + dt,
                                                     pad_f + df: hit.shape[1] - pad_f + df]
    return cover[pad_t:-pad_t, pad_f:-pad_f]


def covered_peaks(cover: np.ndarray, ref_t: np.ndarray, ref_f: np.ndarray, offset: int) -> tuple[int, int]:
    """(reference peaks the clip also has, reference peaks in the clip's
    span) for the clip placed at frame ``offset`` of the reference."""
    t = ref_t - offset
    inside = (t >= 0) & (t < cover.shape[0])
    return int(cover[t[inside], ref_f[inside]].sum()), int(inside.sum())
