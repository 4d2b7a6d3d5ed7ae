"""Designs, readers and input validation (R MLDS conventions)."""

import numpy as np
import pytest

from brainattn.errors import ConfigError, DataError
from brainattn.psychophysics.design import (
    all_quadruples,
    all_triads,
    as_trials,
    make_design,
    parse_responses,
    read_long_table,
    read_mlds_csv,
)


def test_design_counts():
    assert len(all_quadruples(11)) == 330  # C(11, 4)
    assert len(all_triads(10)) == 120  # C(10, 3)
    # Vacher & Mamassian: 13 levels, both gaps <= 3 steps -> 81 triads
    t = all_triads(13, max_gap=3)
    assert len(t) == 81
    assert np.all(np.diff(t, axis=1) <= 3) and np.all(np.diff(t, axis=1) >= 1)
    q = all_quadruples(8, max_gap=2)
    assert np.all(q[:, 1] - q[:, 0] <= 2) and np.all(q[:, 3] - q[:, 2] <= 2)
    assert np.all(np.diff(q, axis=1) > 0)


def test_make_design_repeats_shuffle_and_swaps():
    d = make_design(6, "triad", repeats=3, seed=1, swap_pairs=1.0)
    assert d.shape == (60, 3)
    assert np.all(d[:, 0] > d[:, 2])  # every trial presented descending
    d2 = make_design(6, "triad", repeats=3, seed=1, shuffle=False)
    rows = sorted(map(tuple, np.sort(d, axis=1)))
    assert rows == sorted(map(tuple, d2))


def test_design_matrix_weights():
    tr = as_trials([1, 0], [[1, 2, 3, 4], [2, 3, 5, 6]], n_levels=6)
    X = tr.design_matrix(drop_first=False)
    np.testing.assert_array_equal(X[0], [1, -1, -1, 1, 0, 0])
    np.testing.assert_array_equal(X[1], [0, 1, -1, 0, -1, 1])
    tri = as_trials([1, 1, 0], [[1, 2, 3], [1, 3, 4], [2, 3, 4]])
    np.testing.assert_array_equal(tri.design_matrix(drop_first=False)[1], [1, 0, -2, 1])
    np.testing.assert_array_equal(tri.design_matrix()[1], [0, -2, 1])  # first level dropped


def test_descending_trials_reordered_with_response_flipped():
    # pairs swapped (R's SwapOrder: S1 > S4 -> (S3, S4, S1, S2), resp flipped)
    tr = as_trials([1, 0, 1], [[3, 4, 1, 2], [1, 2, 3, 4], [4, 3, 2, 1]])
    np.testing.assert_array_equal(tr.stim, [[1, 2, 3, 4]] * 3)
    np.testing.assert_array_equal(tr.resp, [0, 0, 0])
    np.testing.assert_array_equal(tr.swapped, [True, False, True])
    tri = as_trials([1, 0, 1], [[3, 2, 1], [1, 2, 3], [1, 2, 4]])
    np.testing.assert_array_equal(tri.stim, [[1, 2, 3], [1, 2, 3], [1, 2, 4]])
    np.testing.assert_array_equal(tri.resp, [0, 0, 1])


def test_responses_accept_bools_and_true_false_strings():
    np.testing.assert_array_equal(parse_responses([True, False, "True", "False", 1, 0, "1", 1.0]),
                                  [1, 0, 1, 0, 1, 0, 1, 1])
    for bad in (2, 0.5, "yes", None, float("nan")):
        with pytest.raises(DataError, match="column 'resp' row 2"):
            parse_responses([1, bad, 0])


def _write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_mlds_csv_roundtrip_and_r_index_column(tmp_path):
    tr = as_trials([1, 0, 1, 1], [[1, 2, 3, 4], [1, 3, 4, 5], [2, 3, 4, 5], [1, 2, 4, 5]])
    p = tr.to_csv(tmp_path / "a.csv")
    back = read_mlds_csv(p, stimulus=[0.1, 0.2, 0.4, 0.8, 1.6])
    np.testing.assert_array_equal(back.stim, tr.stim)
    np.testing.assert_array_equal(back.resp, tr.resp)
    np.testing.assert_allclose(back.stimulus, [0.1, 0.2, 0.4, 0.8, 1.6])
    # R's write.csv adds a quoted row-name column; "TRUE"/"FALSE" responses
    r = _write(tmp_path, '"","resp","S1","S2","S3"\n"1",TRUE,1,2,3\n"2",FALSE,2,3,4\n"3",TRUE,1,3,4\n')
    t3 = read_mlds_csv(r)
    assert t3.kind == "triad" and t3.n_levels == 4
    np.testing.assert_array_equal(t3.resp, [1, 0, 1])


def test_read_long_table_maps_values_to_levels(tmp_path):
    p = _write(tmp_path, "resp,s1,s2,s3\n1,0.5,1.0,2.0\n0,2.0,1.0,0.5\n1,1.0,2.0,4.0\n")
    tr = read_long_table(p)
    np.testing.assert_allclose(tr.stimulus, [0.5, 1.0, 2.0, 4.0])
    np.testing.assert_array_equal(tr.stim, [[1, 2, 3], [1, 2, 3], [2, 3, 4]])
    np.testing.assert_array_equal(tr.resp, [1, 1, 1])  # the descending trial is flipped


@pytest.mark.parametrize(
    "text, match",
    [
        ("resp,S1,S2,S3\n1,1,2,3\n2,1,2,3\n1,2,3,4\n", r"column 'resp' row 2 is '2'"),
        ("resp,S1,S2,S3\n1,1,2,3\nyes,1,2,3\n1,2,3,4\n", r"column 'resp' row 2 is 'yes'"),
        ("resp,S1,S2,S3\n1,1,2,3\n,1,2,3\n1,2,3,4\n", r"column 'resp' row 2 is missing"),
        ("resp,S1,S2,S3\n1,1,2,3\n0,1,,3\n1,2,3,4\n", r"column 'S2' row 2 is missing"),
        ("resp,S1,S2,S3\n1,1,2,3\n0,1,2.5,3\n1,2,3,4\n", r"column 'S2' row 2 is '2.5'.*integer"),
        ("resp,S1,S2,S3\n1,1,2,3\n0,0,2,3\n1,2,3,4\n", r"column 'S1' row 2 is 0.*1\.\.4"),
        ("resp,S1,S2,S3\n1,1,2,5\n0,2,3,5\n1,1,3,5\n", r"level 4 never appears"),
        ("resp,S1,S2,S3\n1,1,3,2\n0,2,3,4\n1,1,2,4\n", r"row 1 triad \(1, 3, 2\) is not ordered"),
        ("resp,S1,S2\n1,1,2\n", r"no 'S3' column"),
        ("response,S1,S2,S3\n1,1,2,3\n", r"no 'resp' column"),
    ],
)
def test_bad_mlds_csv_one_line_errors(tmp_path, text, match):
    p = _write(tmp_path, text)
    with pytest.raises(DataError, match=match) as exc:
        read_mlds_csv(p)
    assert "\n" not in str(exc.value)
    assert str(p) in str(exc.value)


def test_fewer_than_three_levels_and_quadruple_pairs():
    with pytest.raises(DataError, match="at least 3 levels"):
        as_trials([1, 0], [[1, 2, 2], [1, 2, 2]], n_levels=2)
    with pytest.raises(DataError, match="row 1 quadruple .* identical"):
        as_trials([1, 0], [[1, 1, 2, 3], [1, 2, 3, 4]])
    with pytest.raises(ConfigError):
        all_triads(2)
    with pytest.raises(ConfigError):
        make_design(5, "pairs")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_mlds_csv(tmp_path / "nope.csv")
