"""Every tunable of the fingerprint pipeline, one section per stage.

Each value says in one line why it is what it is; the modules of the
package read them from here (:mod:`.spectrum` -> :mod:`.landmarks` ->
:mod:`.match` -> :mod:`.local` / :mod:`.server`, and :mod:`.audiocheck`).
Changing one that shapes the hashes (spectrum, peaks, hashes) makes old
fingerprints incomparable: bump :data:`FINGERPRINT_VERSION` with it.
"""

from __future__ import annotations

# --------------------------------------------------------------- spectrum

#: Analysis rate (Hz): 8 kHz holds the telephone band, and halves the work.
ANALYSIS_RATE = 8000
#: FFT frame (samples): 128 ms, 7.8 Hz bins resolve the notes of tonal music.
N_FFT = 1024
#: Hop (samples): 32 ms frames place a clip to well under a second.
HOP = 256
#: Seconds per frame: the unit of landmark times.
FRAME_SECONDS = HOP / ANALYSIS_RATE
#: Band the peaks are taken from (Hz): what a telephone line keeps.
F_MIN_HZ = 250.0
F_MAX_HZ = 3500.0
#: The band in FFT bins: 32 up to 448 (exclusive).
BIN_LO = int(round(F_MIN_HZ * N_FFT / ANALYSIS_RATE))  # 32
BIN_HI = int(round(F_MAX_HZ * N_FFT / ANALYSIS_RATE))  # 448 (exclusive)
#: Added to the power before the log: keeps digital silence finite.
LOG_FLOOR = 1e-7

# ------------------------------------------------------------------ peaks

#: Peak neighbourhood half-sizes (frames, bins): a peak is the maximum of it.
PEAK_HALF_T = 3
PEAK_HALF_F = 8
#: Local-mean box (frames, bins) that salience is measured against: about
#: 1 s by 330 Hz takes out the slope of pink noise, hum and loudness.
MEAN_BOX = (31, 43)
#: Minimum height above the local mean (natural-log power, 1.0 = 4.3 dB).
MIN_SALIENCE = 1.0
#: Frames per density block (0.5 s): peaks are ranked within each block.
BLOCK_FRAMES = 16
#: Peaks per second kept for library tracks: few, so the index stays small
#: and random collisions rare.
REF_DENSITY = 18
#: Peaks per second kept for clips: several times more, so the reference's
#: peaks are among the clip's even when noise adds strong spurious ones.
QUERY_DENSITY = 50

# ----------------------------------------------------------------- hashes

#: Targets paired with each anchor in a library track (sparse index).
REF_FANOUT = 5
#: Targets paired with each anchor in a clip: the reference's pairs are
#: then among the clip's.
QUERY_FANOUT = 12
#: Target zone: frame differences a pair may span (32 ms .. 2 s) ...
DT_MIN, DT_MAX = 1, 63
#: ... and bin differences (+-1 kHz).
DF_MAX = 127
#: Bits of a landmark hash: anchor bin (9) | bin difference (8) | frames (6).
HASH_BITS = 23
#: The low HASH_BITS of a stored landmark word are its hash ...
HASH_MASK = (1 << HASH_BITS) - 1
#: ... the next 2 x FINE_BITS hold where its two peaks sit between FFT bins
#: (1/15 bin steps): what a speed-invariant key needs and the exact bins
#: lack (a bin is 3 % of the frequency at 250 Hz).
FINE_BITS = 4
FINE_STEPS = (1 << FINE_BITS) - 1
#: A stored peak below its frame: bin from BIN_LO (9 bits) and sub-bin
#: code (FINE_BITS), as :func:`.landmarks.pack_peaks` packs it.
PEAK_BITS = 9 + FINE_BITS
#: Landmark times are stored in this many bits (2**20 frames = 9.3 hours).
TIME_BITS = 20
MAX_FRAMES = 1 << TIME_BITS
#: Bumped whenever a change makes old hashes incomparable with new ones.
#: 2: the index is searched by speed-invariant keys, words carry sub-bin
#: peak positions.
FINGERPRINT_VERSION = 2

# ------------------------------------------------------ speed-invariant keys

#: A speed change by ``s`` multiplies every frequency by ``s`` and divides
#: every time by ``s``. Of a pair of peaks (anchor a, target b) it leaves
#: ``ln(f_b / f_a)`` and ``ln(f_a * dt)`` alone: the key of a pair is
#: those two, in cells, with the anchor's log frequency in narrow bands.
#: A clip looks up every band its anchor can come from over the speeds
#: searched, and each hit says its speed (clip frequency over the band's).
#: Each cell is a few times the measurement error of its quantity (a
#: peak's frequency to about 1/10 bin, its frame to 1/2), so a pair
#: rarely falls across a border; where it lies within that error of one,
#: the clip also looks up the neighbouring cell.
KEY_BAND = 0.01
KEY_RATIO_CELL = 0.006
KEY_PRODUCT_CELL = 0.04
KEY_RATIO_ERROR = 0.003
KEY_PRODUCT_ERROR = 0.015
#: Keys are folded into HASH_BITS by multiplicative hashing: a collision
#: only adds a chance hit. A word that cannot be a landmark (no valid
#: pair of peaks) gets NO_KEY, which no clip looks up.
NO_KEY = 0
#: Speeds (clip over track) searched: first within +-2.5 % (radio, a
#: turntable slightly off), then, when that is not conclusive, +-8.5 %
#: (a DJ's pitch fader at its end stop). One search each, whatever the
#: speed.
NEAR_SPEED = 1.025
MAX_SPEED = 1.085
#: Votes of the candidate stage gather per (track, speed cell, offset
#: cell): cells of 2 % in speed hold a band's spread of speeds (1 %).
KEY_SPEED_CELL = 0.02
#: Verification hashes the clip at the speed read back from each
#: candidate's votes and this far either side (log units); the exact
#: hashes hold within about +-0.3 % of the true speed.
VERIFY_SPEED_STEPS = (-0.005, 0.0, 0.005)
#: Those speeds are rounded to this grid (log units): a quarter of the
#: exact hashes' tolerance, so nearby candidates share their speeds and
#: an unaltered clip is hashed at speed 1 exactly.
VERIFY_SPEED_GRID = 0.0025

# ------------------------------------------------------------------ query

#: Sub-hop offsets (fractions of a hop) the query is analysed at. Which
#: frame a peak lands in, and so the frame difference in its hashes,
#: depends on where the frames start: with one analysis a clean clip's
#: votes vary 3x with its sub-hop position; four make them steady.
QUERY_SHIFTS = (0.0, 0.25, 0.5, 0.75)
#: Shortest clip that can be identified, in seconds.
MIN_CLIP_SECONDS = 1.0
#: Clip analysis is capped: a longer clip adds latency, not certainty.
MAX_CLIP_SECONDS = 30.0

# ------------------------------------------------------------ local index

#: On-disk format of the local index (MANIFEST.json's "format").
#: 4: 11 bytes a landmark instead of 16 (key suffixes under the
#: directory, 6-byte forward entries; :mod:`.local.segments`).
#: 5: the forward copy holds each track's peaks (4 bytes a peak, about
#: 0.8 bytes a landmark) instead of its landmark words: 6.2 bytes a landmark.
#: 6: postings of 17-bit items and 15-bit frames (:data:`POST_TIME_BITS`),
#: each segment's layout named in the manifest ("post_bits").
FORMAT_VERSION = 6
#: Formats this version reads. Format 2 held fingerprint version 1 only,
#: which is rebuilt anyway (``beet embed``, no model run); format 3, 4 and
#: 5 segments are read as they are until ``beet embed`` rewrites them.
READABLE_FORMATS = (3, 4, 5, 6)
#: Bits of the frame in a posting (local item << POST_TIME_BITS | frame).
#: The candidate search needs the frame only to find offset-consistent
#: votes, so frames wrap after 2**15 (17.5 minutes: a longer track, a DJ
#: mix or a symphony, folds its later votes onto its first 17.5 minutes,
#: and each of its places is verified at every wrap); verification reads
#: full frames from the forward copy. The other 17 bits number up to
#: 131,072 items, so a 100,000-track library fits one segment: a search
#: looks up each hash once per segment, and from a cold page cache each
#: segment is one more set of disk reads a hash (10 segments of 16,384
#: tracks: 1.8-2.2 s a whole ``beet identify``; one: 0.75-0.83 s).
POST_TIME_BITS = 15
#: The frame bits of a current-format posting.
POST_FRAME_MASK = (1 << POST_TIME_BITS) - 1
#: Frame bits of the postings of segments written before format 6 (up to
#: 16,384 items each); read as they are until ``beet embed`` rewrites them.
LEGACY_POST_TIME_BITS = 18
#: Items per segment: the local item number has 32 - POST_TIME_BITS bits.
MAX_SEGMENT_ITEMS = 1 << (32 - POST_TIME_BITS)
#: Postings a merge holds in memory at once: it streams the hash space
#: in slices, so merging 16,384 tracks needs a few hundred MB, not 5 GB.
MERGE_CHUNK_POSTINGS = 2_000_000
#: Buffered landmarks that trigger an automatic flush (bounded memory).
AUTO_FLUSH_LANDMARKS = 2_000_000
#: Segments of one size tier that get merged (tiered, like an LSM tree).
MERGE_FANIN = 4
#: Tracks from which a segment that can still grow counts as large. From
#: a cold page cache every segment costs a search a disk read a key, and a
#: segment of 10,000 tracks about as much as one of 60,000: at 100,000
#: tracks a whole ``beet identify`` took 0.8 s in one segment, 0.9-1.0 s
#: in two, 1.2-1.3 s in four. Two large segments that can still grow are
#: merged, so that beside the full ones one large segment grows at a time.
LARGE_SEGMENT_ITEMS = 4096
#: Small segments (under :data:`LARGE_SEGMENT_ITEMS`) kept at most before
#: the lowest size tier that holds two of them is merged. Always merging
#: the two smallest instead merged each write's few tracks into a
#: segment of up to about 15,000: on the way to 100,000 tracks, every
#: track was written again about 800 times by ``beet embed``'s writes of
#: 8 tracks (530 by albums of 12); now about 17.
MAX_SMALL_SEGMENTS = 4
#: Prefix bits of a segment's directory: at least 16, and enough that a
#: prefix run holds about 2**DIR_RUN_BITS hashes (1 KiB, one page read
#: when the index is not in memory) however large the segment.
MIN_DIR_BITS = 16
DIR_RUN_BITS = 8
#: Postings per hash value in the whole index are kept up to this (uint16).
COUNT_SATURATED = (1 << 16) - 1

# ---------------------------------------------------------- server index

#: A track is stored as parts of this length: long compared with a clip,
#: so a clip spans at most two parts.
PART_SECONDS = 30.0
PART_FRAMES = int(round(PART_SECONDS / FRAME_SECONDS))
#: Parts per track (point ids are item * MAX_PARTS + part).
MAX_PARTS = 1 << 16
#: Points per upsert request: small requests, few round trips.
UPSERT_BATCH = 64

# ------------------------------------------------- search (candidates)

#: Hashes with more postings than STOP_POSTINGS_FACTOR times the mean per
#: hash value (with a floor for small libraries) are skipped: they match
#: everything, cost most of the lookup time and add only chance votes.
STOP_POSTINGS_FLOOR = 64
STOP_POSTINGS_FACTOR = 8
#: Items that the candidate stage passes on to verification.
VERIFY_CANDIDATES = 16
#: Places of each candidate the local index verifies: its offset cells
#: with the most votes in the candidate stage. Only the landmarks over the
#: clip's span there (and VERIFY_MARGIN frames either side) are paired and
#: matched, not the whole track: the true place is the best cell, a
#: repeated passage gets as many votes. The best unrelated candidate's
#: count over these places is the confidence's yardstick: with 4 places
#: chance trials reached the bar more often than over whole tracks, with
#: 8 the dev corpus's are where they were (bench/calibrate.py; see
#: docs/design.md, "Verification reads the places the votes found").
VERIFY_PLACES = 8
#: Frames either side of a verified place (1 s): the candidate stage's
#: offset is good to a cell, its speed to a speed cell.
VERIFY_MARGIN = 32
#: Parts a server candidate search asks for (several may be of one track).
CANDIDATE_PARTS = 2 * VERIFY_CANDIDATES
#: Postings the candidate stage reads per search. Query hashes are taken
#: rarest first until this many postings are spent: in a large library a
#: quarter of a clip's hashes hold most of its postings (common intervals
#: in common registers) and say least about which track it is, so the
#: cost of a search stays flat as the library grows while most of the
#: clip's evidence is still read. A small library is read whole. A clip
#: looks up about 17 keys a pair for +-2.5 % (bands and border cells)
#: where it looked up one exact hash: at 1,000 tracks its keys hold about
#: 250,000 postings, and a budget of 150,000 (the exact hashes') lost the
#: right track for 1 clip in 10 (bench/listen.py); 500,000 reads them all
#: there. At 100,000 tracks a whole cold ``beet identify`` with it (and
#: the first round below) answers in 0.62-0.70 s (docs/benchmarks.md).
CANDIDATE_POSTINGS = 500_000
#: Postings of the first round of the candidate stage (:func:`.local.search.candidate_rounds`):
#: a clip that the candidates of its rarest hashes settle (confidence at
#: least EARLY_STOP_CONFIDENCE, the bar that ends the speed search) is
#: answered from them; any other clip reads on up to CANDIDATE_POSTINGS
#: and gets the candidates of the whole budget. A cost, not a verdict:
#: an answer from the first round meets the bar every answer does. At
#: 1,000 and 10,000 tracks (clean, noisy and +-2 % clips) 31 of 32 are
#: settled by the first round, with the same track and confidence; a
#: small library fits in it whole.
CANDIDATE_FIRST_POSTINGS = 125_000
#: Landmarks of the sample that judges which hashes fit in that budget
#: (the largest segments, at least this many landmarks: ~2,000 tracks).
BUDGET_SAMPLE_LANDMARKS = 40_000_000
#: Frame shifts of the candidate stage: one is enough to find the track.
CANDIDATE_SHIFTS = (0.0,)
#: Votes a (track, speed, offset cell) needs to reach the exact count of
#: the candidate stage: a lone hit is chance.
CANDIDATE_CELL_VOTES = 2

# ----------------------------------------------------------------- voting

#: Votes are first counted in cells of 2**OFFSET_CELL_BITS frames (4
#: frames, 128 ms): a true match piles into one offset within a frame.
OFFSET_CELL_BITS = 2
#: The cell grids, shifted by these many frames: two grids half a cell
#: apart, so a cluster on a cell border is counted whole on one of them.
OFFSET_GRIDS = (0, 2)

# ------------------------------------------- verification and confidence

#: A match needs at least this many offset-consistent votes.
MIN_SCORE = 5
#: The runner-up's score is taken as at least this share of the reference
#: peaks over the clip's span: what chance reaches when no unrelated
#: candidate is there to show it (a library of a few tracks). The best
#: unrelated candidate of a dev-corpus clip has 0.16 to 0.48 of them
#: (5th to 95th percentile, median 0.29).
RUNNER_UP_SHARE = 0.2
#: Confidence below this is reported as "not in your library".
MIN_CONFIDENCE = 0.5
#: Confidence that ends the search after speed 1.0 and its neighbours,
#: and after the first round of the candidate stage (CANDIDATE_FIRST_POSTINGS).
EARLY_STOP_CONFIDENCE = 0.999
#: Logistic calibration of confidence (``bench/calibrate.py`` fits it).
CONF_SLOPE = 2.46
CONF_CENTER = 2.64
#: How far (frames, bins) a clip peak may sit from a reference peak and
#: still count as the same peak: the rounding of a frame shift and of a
#: speed-mapped frequency move a peak by up to one.
COVER_FRAMES = 1
COVER_BINS = 1
#: A version, not the recording (:mod:`.versions`): at least this share of
#: the track's peaks over the clip's span are holes in the clip, and at
#: least MIN_VERSION_HOLES of them (a clip of a few peaks proves nothing).
#: Not fitted: the dev corpus's 888 clips answered with their recording,
#: every degradation, held 1 hole in 77,000 peaks (half A none, half B one
#: phone clip's); 5% and 4 holes are a margin for phones and codecs unlike
#: the corpus's (docs/benchmarks.md, "Versions").
VERSION_HOLE_SHARE = 0.05
MIN_VERSION_HOLES = 4
#: The level test of a version (:func:`.versions.deficits`), against the
#: track's own audio at the answered place: a cell of the track that would
#: stand DEFICIT_DB over the clip's noise floor is *missing* when the clip
#: holds it DEFICIT_DB under the track's level. Sound added at least 10 dB
#: under the track can lower a cell by interference by at most 3.3 dB
#: (a power ratio of (1 - 10^-0.5)^2): the depth is that bound, not a fit.
DEFICIT_DB = 10.0
#: Cells of the track below this level over the spectrogram's floor
#: (:data:`LOG_FLOOR`: digital silence) are no sound a clip can lack.
AUDIBLE_DB = 30.0
#: The clip's noise floor in each bin: its median level over the frames
#: where the track is quietest in that bin (this share of them), smoothed
#: over FLOOR_BINS bins.
QUIET_SHARE = 0.25
FLOOR_BINS = 9
#: The clip's gain against the track (level, phone band, EQ), per group of
#: GAIN_BINS bins: the median level difference over the track's loudest
#: LOUDEST_SHARE of cells where the clip stands DEFICIT_DB over its floor;
#: at least MIN_GAIN_GROUPS groups with MIN_GAIN_CELLS such cells.
GAIN_BINS = 32
LOUDEST_SHARE = 0.1
MIN_GAIN_CELLS = 10
MIN_GAIN_GROUPS = 3
#: "A version of" when at least this share of the track's audible cells
#: are missing, of at least MIN_AUDIBLE_CELLS. Chosen on the dev corpus:
#: its recordings that the landmarks answer lack at most 6.9% (half A; a
#: clean clip of a track whose library file is AAC) and 3.7% (half B),
#: but the tracker modules rendered again against the library's files lack
#: up to 10% (16% with noise: one module renders differently in places),
#: and 10% named one of them a version. The half-part versions of
#: bench/versions.py lack a median of 8-11% (docs/benchmarks.md,
#: "Versions by level").
VERSION_DEFICIT_SHARE = 0.15
MIN_AUDIBLE_CELLS = 50
#: The speed is fitted over the matched anchors when there are at least
#: this many, spanning this many frames (1.3 s); else the grid value stands.
SPEED_FIT_MIN_ANCHORS = 4
SPEED_FIT_MIN_FRAMES = 40
#: The vote already pinned the speed to within a grid step (+-0.005).
SPEED_FIT_RANGE = 0.005
#: Repeats of the passage (loops, choruses) need this share of the best
#: votes, at least REPEAT_GAP_SECONDS from each other; at most MAX_REPEATS.
REPEAT_SHARE = 0.6
REPEAT_GAP_SECONDS = 1.0
MAX_REPEATS = 8
#: Share of the shorter track's landmarks that must agree at one offset
#: for two items to be one recording (a remix shares a few percent).
SAME_RECORDING_SHARE = 0.25
#: Postings a same-recording check reads, about: beyond it, a share of
#: the track's hashes chosen by their value. A small library is read
#: whole; at 100,000 tracks a track's hashes hold 20 to 250 million
#: postings, and reading all that the stop list leaves took 0.6-1.6 s a
#: track (a check follows every import), 50-90 ms now.
SAME_RECORDING_POSTINGS = 1_000_000

# ------------------------------------------------------------ second look

#: Candidate tracks compared: the landmark verdict's best place and the
#: next best by peak count.
SECOND_LOOK_CANDIDATES = 4
#: Lags searched on each side of a candidate's place; those further than
#: :data:`NEAR_FRAMES` from it measure chance.
SEARCH_SECONDS = 3.0
#: The place itself: the landmark votes place a clip to within a frame or
#: two.
PLACE_FRAMES = 2
#: Lags this close to the place still share the clip's notes in part.
NEAR_FRAMES = 8
#: Only the first this-many seconds of a clip are compared (longer clips
#: have landmarks enough; the cost grows with the square of the length).
SECOND_LOOK_SECONDS = 12.0
#: Bins of the local mean taken out of each frame (about 340 Hz).
FINE_BINS = 43
#: Confidence = logistic of the evidence ``z`` (the best correlation in
#: units of the chance spread), fitted by ``bench/calibrate.py`` on the
#: dev corpus's second looks (638 naming the clip's track, 693 chance);
#: 0.5 sits above every chance trial the landmarks left uncertain (top
#: 6.35), since the second look cannot be measured at 10,000 tracks.
AUDIO_SLOPE = 1.74
AUDIO_CENTER = 6.40

# -------------------------------------------------------------- placement

#: Another place of the track replaces the votes' place only when the
#: clip correlates this many times better there (variations of a passage,
#: a theme restated, fit almost as well as the place itself).
PLACE_RATIO = 1.4
#: Places where the track's stored peaks meet the clip's most often that
#: are read besides the votes' place and repeats (:mod:`.placement`): on
#: the dev corpus every place the whole track's comparison chose but one
#: was among the votes' repeats or the first 3 of these.
LIKELY_PLACES = 4
#: How much better (in Fisher z, ``atanh`` of the correlation) another
#: candidate place must fit the clip than the votes' choice to replace it
#: in :func:`.placement.refine_offset`. A clip's correlation with
#: unrelated passages of the same track spreads by about 0.04 (dev
#: corpus), so smaller differences say nothing; at 0 dB noise the true
#: place and a similar passage differ by less than 0.01.
REFINE_MARGIN = 0.05
