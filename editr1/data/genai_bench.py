"""GenAI-Bench's image-editing human votes as preference pairs (`editr1 eval reward-alignment`).

The set is Hugging Face `TIGER-Lab/GenAI-Bench`, config `image_edition`, split `test_v1`; save it once with

    datasets.load_dataset("TIGER-Lab/GenAI-Bench", "image_edition", split="test_v1").save_to_disk(PATH)

Each row is one vote between two models' edits of `source_image` by the instruction `instruct_prompt`:
`left_output_image` is side a, `right_output_image` side b. `vote_type` `leftvote` prefers a, `rightvote`
b; `tievote` (both equally good) and `bothbad_vote` (both bad) are ties, their kind kept in
`PreferencePair.vote`. Columns and votes are checked for every row before anything is scored; the images
are decoded when scored. Errors name the folder, the row (0-based) and the column.
"""

from __future__ import annotations

from pathlib import Path

from editr1.data.preference_pairs import DatasetImage, PreferencePair
from editr1.errors import DataError, EditR1Error

#: Side a's and side b's edits, and the source: the image columns a row needs.
IMAGE_COLUMNS = ("source_image", "left_output_image", "right_output_image")
#: The text columns a row needs.
TEXT_COLUMNS = ("instruct_prompt", "vote_type")
#: Each vote as editr1's label of the pair.
VOTES = {"leftvote": "a", "rightvote": "b", "tievote": "tie", "bothbad_vote": "tie"}
#: The split `save_to_disk` of a whole DatasetDict holds the votes in.
SPLIT = "test_v1"


def _datasets():
    try:
        import datasets
    except ImportError as error:
        raise EditR1Error(f"reading GenAI-Bench needs the optional package `datasets` ({error}): "
                          "pip install 'editr1[bench]'") from error
    return datasets


def _load(path: Path):
    datasets = _datasets()
    try:
        saved = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise DataError(f"GenAI-Bench: {path} is not a dataset saved with datasets.save_to_disk ({error}); save it with "
                        "load_dataset('TIGER-Lab/GenAI-Bench', 'image_edition', split='test_v1').save_to_disk(PATH)") from None
    except Exception as error:  # a damaged arrow file or state.json
        raise DataError(f"GenAI-Bench: cannot load the dataset at {path}: {type(error).__name__}: {error}") from None
    if isinstance(saved, datasets.DatasetDict):
        if SPLIT in saved:
            return saved[SPLIT]
        if len(saved) != 1:
            raise DataError(f"GenAI-Bench: {path} has splits {', '.join(saved)}, expected {SPLIT!r}")
        return next(iter(saved.values()))
    return saved


def read_genai_bench(path: Path) -> list[PreferencePair]:
    """The votes of a saved GenAI-Bench `image_edition` split, in row order; DataError on the first problem."""
    datasets = _datasets()
    path = Path(path)
    where = f"GenAI-Bench {path}"
    dataset = _load(path)
    for column in (*IMAGE_COLUMNS, *TEXT_COLUMNS):
        if column not in dataset.column_names:
            raise DataError(f"{where}: no column {column!r} (it has {', '.join(dataset.column_names)})")
    for column in IMAGE_COLUMNS:
        feature = dataset.features[column]
        if not isinstance(feature, datasets.Image):
            raise DataError(f"{where}: column {column!r} holds {feature}, not images")
        # Arrow's null flags: a missing image is found without decoding any.
        missing = dataset.with_format("arrow")[column].is_null().to_pylist()
        if True in missing:
            raise DataError(f"{where} row {missing.index(True)}: column {column!r}: missing (null)")
    texts = dataset.select_columns(list(TEXT_COLUMNS)).to_dict()
    images = {column: dataset.select_columns([column]) for column in IMAGE_COLUMNS}
    pairs = []
    for row, (prompt, vote) in enumerate(zip(texts["instruct_prompt"], texts["vote_type"])):
        if vote not in VOTES:
            raise DataError(f"{where} row {row}: column 'vote_type': expected one of {', '.join(VOTES)}, got {vote!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where} row {row}: column 'instruct_prompt': expected a non-empty instruction, got {prompt!r}")
        cell = {column: DatasetImage(where, row, column, images[column]) for column in IMAGE_COLUMNS}
        pairs.append(PreferencePair(
            id=f"row {row}", sources=(cell["source_image"],), prompt=prompt, requirement=None,
            image_a=cell["left_output_image"], image_b=cell["right_output_image"], preferred=VOTES[vote], line=row,
            vote=vote,
        ))
    if not pairs:
        raise DataError(f"{where}: no rows")
    return pairs
