"""The results file of a search: one JSON line per finished trial.

Each trial is appended as it finishes, flushed and fsynced, so a crash loses no
finished work; a search started again with the same file reads back the trials
it holds with the same round, index and parameters instead of running them.
"""

import json
import os
import warnings

import numpy as np

from .results import _ok_score


def _json_default(obj):
    """JSON for what ``json`` cannot write: NumPy scalars and arrays, sets; anything else as its repr."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    return repr(obj)


def _canonical(params):
    """``params`` as JSON with sorted keys: equal for the same parameters, read back or drawn."""
    return json.dumps(params, sort_keys=True, default=_json_default)


class _Journal:
    """Appends finished trials to a JSON-lines file and reads back earlier ones."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.records = {}  # (round, trial) -> records in file order
        bad = 0
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:  # a line cut short by a crash
                        bad += 1
                        continue
                    if _valid_saved(record):
                        self.records.setdefault((record.get("round"), record["trial"]), []).append(record)
                    else:
                        bad += 1
        if bad:
            warnings.warn(f"out={self.path!r}: ignored {bad} unreadable line(s)", RuntimeWarning, stacklevel=4)
        self._fh = open(self.path, "a", encoding="utf-8")
        if self._fh.tell() > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # finish a line cut short, so the next one stands alone
                    self._fh.write("\n")

    def done(self, round_, trial, params, retry_failed):
        """The last saved record of this trial with these exact params, if it counts as done."""
        key = _canonical(params)
        found = None
        for record in self.records.get((round_, trial), ()):
            if _canonical(record["params"]) == key:
                found = record
        if found is None or (found["status"] == "failed" and retry_failed):
            return None
        return found

    def append(self, record):
        self._fh.write(json.dumps(record, default=_json_default) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self):
        self._fh.close()


def _valid_saved(record):
    """Whether a line read back is a trial record this module wrote."""
    if not isinstance(record, dict) or not isinstance(record.get("params"), dict):
        return False
    trial = record.get("trial")
    if isinstance(trial, bool) or not isinstance(trial, int):
        return False
    if record.get("status") == "ok":
        return _ok_score(record) is not None
    return record.get("status") == "failed"
