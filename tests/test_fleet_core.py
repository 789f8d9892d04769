"""Fleet core: signed prior documents, keys, robust aggregation, privacy and its accountant."""

from __future__ import annotations

import copy
import json
import stat

import hypothesis as hyp
import hypothesis.strategies as st
import jsonschema
import numpy as np
import pytest

from edge_agent.errors import UsageError
from edge_agent.fleet.aggregate import AggregationError, aggregate, clipped_fedavg
from edge_agent.fleet.document import (PriorRefused, prior_from_doc, prior_to_doc, sign_prior,
                                       update_from_doc, update_to_doc, verify_prior)
from edge_agent.fleet.keys import keygen, load_private_key, load_public_key
from edge_agent.fleet.privacy import (PrivacyAccountant, Reference, clipped_deviation,
                                      clipped_level, private_summary, privatise, sensitivity)
from edge_agent.models.prior import MemberSummary
from edge_agent.schema import load_schema

NAMES = ("sustained_rms_g", "kurtosis", "skewness")


def member(machine, level=0.1, *, windows=120, seed=0, weights=True):
    rng = np.random.default_rng(seed)
    ae = {"": [rng.normal(size=(3, 2)), rng.normal(size=2), rng.normal(size=(2, 3)),
               rng.normal(size=3)]} if weights else None
    return MemberSummary("pump-a", machine, NAMES, windows,
                         [np.log10(level), np.log10(3.0) + 0.01 * seed, 0.02 * seed],
                         [0.03, 0.02, 0.1], [True, True, False], ae)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    private, public = keygen(directory)
    return load_private_key(private), load_public_key(public), directory


@pytest.fixture(scope="module")
def prior():
    return aggregate([member("p1", 0.10, seed=1), member("p2", 0.12, seed=2),
                      member("p3", 0.11, seed=3)], class_name="pump-a", version=4,
                     created_s=1.7e9)


def test_keygen_writes_a_private_key_only_its_owner_reads_and_refuses_to_overwrite(keys):
    _, _, directory = keys
    assert stat.S_IMODE((directory / "fleet.key").stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in (directory / "fleet.pub").read_bytes()
    with pytest.raises(UsageError, match="already holds a fleet key"):
        keygen(directory)


def test_loading_a_wrong_or_missing_key_says_which_file(tmp_path, keys):
    with pytest.raises(UsageError, match="cannot read the fleet public key"):
        load_public_key(tmp_path / "none.pub")
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(UsageError, match="junk.pub is not a PEM public key"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(UsageError, match="not an unencrypted PEM private key"):
        load_private_key(keys[2] / "fleet.pub")


def test_a_signed_prior_round_trips_through_json_and_matches_its_schema(keys, prior):
    private, public, _ = keys
    doc = json.loads(json.dumps(sign_prior(prior, private)))
    jsonschema.Draft202012Validator(load_schema("fleet-prior")).validate(doc)
    back = verify_prior(doc, public, class_name="pump-a", newer_than=3,
                        feature_names=["kurtosis"])
    assert back.version == 4 and back.members == 3 and back.feature_names == prior.feature_names
    np.testing.assert_allclose(back.location, prior.location, rtol=1e-9)
    np.testing.assert_allclose(back.spread, prior.spread, rtol=1e-9, atol=1e-12)
    assert [w.shape for w in back.ae_weights[""]] == [(3, 2), (2,), (2, 3), (3,)]
    assert back.provenance["robust"] is True


@pytest.mark.parametrize("tamper", [
    lambda d: d["features"][0].__setitem__("location", d["features"][0]["location"] + 0.3),
    lambda d: d.__setitem__("version", d["version"] + 1),
    lambda d: d.__setitem__("class", "pump-b"),
    lambda d: d["autoencoder"][0]["weights"][1].__setitem__(0, 9.0),
    lambda d: d["signature"].__setitem__("value", "AAAA" + d["signature"]["value"][4:]),
    lambda d: d["signature"].__setitem__("value", "not base64!"),
])
def test_a_tampered_prior_is_refused_for_its_signature(keys, prior, tamper):
    private, public, _ = keys
    doc = sign_prior(prior, private)
    tamper(doc)
    with pytest.raises(PriorRefused) as refused:
        verify_prior(doc, public, class_name="pump-a")
    assert refused.value.reason == "signature" and "signature" in str(refused.value)


def test_a_prior_signed_by_another_key_or_unsigned_is_refused(tmp_path, keys, prior):
    _, public, _ = keys
    keygen(tmp_path)
    doc = sign_prior(prior, load_private_key(tmp_path / "fleet.key"))
    with pytest.raises(PriorRefused, match="signature") as refused:
        verify_prior(doc, public, class_name="pump-a")
    assert refused.value.reason == "signature"
    del doc["signature"]
    with pytest.raises(PriorRefused) as refused:
        verify_prior(doc, public, class_name="pump-a")
    assert refused.value.reason == "unsigned"


def test_wrong_class_replayed_old_version_and_missing_features_are_refused(keys, prior):
    private, public, _ = keys
    doc = sign_prior(prior, private)
    cases = [({"class_name": "pump-b"}, "wrong_class"),
             ({"class_name": "pump-a", "newer_than": 4}, "old_version"),
             ({"class_name": "pump-a", "newer_than": 7}, "old_version"),
             ({"class_name": "pump-a", "feature_names": ["rms_g"]}, "features")]
    for kwargs, reason in cases:
        with pytest.raises(PriorRefused) as refused:
            verify_prior(doc, public, **kwargs)
        assert refused.value.reason == reason, kwargs


def test_a_validly_signed_document_of_another_format_is_refused_as_format(keys, prior):
    private, public, _ = keys
    doc = prior_to_doc(prior)
    doc["format"] = 2
    body = {k: v for k, v in doc.items()}
    signed = sign_prior(prior, private)
    # re-sign the changed body with the same key: a future format, properly signed
    from edge_agent.fleet.document import canonical
    import base64
    body["signature"] = dict(signed["signature"],
                             value=base64.b64encode(private.sign(canonical(body))).decode())
    with pytest.raises(PriorRefused) as refused:
        verify_prior(body, public, class_name="pump-a")
    assert refused.value.reason == "format"
    with pytest.raises(PriorRefused, match="format"):
        prior_from_doc({"schema": "edge-agent/fleet-prior/1", "format": 1})


def test_one_malicious_member_cannot_move_the_prior_outside_the_others_range():
    honest = [member(f"p{i}", level, seed=i) for i, level in enumerate((0.10, 0.13, 0.11, 0.12))]
    for evil_level in (1e-6, 10.0, 1e6):
        evil = member("evil", evil_level, seed=9, windows=100_000)
        evil = MemberSummary(evil.class_name, evil.machine, evil.feature_names, evil.windows,
                             evil.location * 50, evil.scale * 1e4, evil.log,
                             {"": [w * 1e6 for w in evil.ae_weights[""]]})
        for method in ("median", "trimmed_mean"):
            prior = aggregate(honest + [evil], class_name="pump-a", version=1, created_s=0.0,
                              method=method)
            L = np.array([m.location for m in honest])
            S = np.array([m.scale for m in honest])
            assert np.all(prior.location >= L.min(axis=0) - 1e-12)
            assert np.all(prior.location <= L.max(axis=0) + 1e-12)
            assert np.all(prior.scale <= S.max(axis=0) * (1 + 1e-9))
            spread_honest = aggregate(honest, class_name="pump-a", version=1,
                                      created_s=0.0).spread
            assert np.all(prior.spread <= 2.5 * spread_honest + 1e-12)
            # the weights: at most its window share of a clip the honest members set
            W = np.array([np.concatenate([w.ravel() for w in m.ae_weights[""]])
                          for m in honest])
            got = np.concatenate([w.ravel() for w in prior.ae_weights[""]])
            assert np.abs(got).max() < 3 * np.abs(W).max()


def test_aggregation_refuses_what_cannot_be_aggregated():
    with pytest.raises(AggregationError, match="no member"):
        aggregate([], class_name="pump-a", version=1, created_s=0.0)
    with pytest.raises(AggregationError, match="other classes"):
        aggregate([member("p1")], class_name="fan", version=1, created_s=0.0)
    with pytest.raises(AggregationError, match="twice"):
        aggregate([member("p1"), member("p1")], class_name="pump-a", version=1, created_s=0.0)
    two = aggregate([member("p1"), member("p2", 0.2)], class_name="pump-a", version=1,
                    created_s=0.0)
    assert two.provenance["robust"] is False


def test_fedavg_weights_by_windows():
    w = [[np.array([0.0])], [np.array([1.0])]]
    np.testing.assert_allclose(clipped_fedavg(w, [3, 1], clip=10.0)[0], [0.25])


def test_update_documents_round_trip_and_match_their_schema():
    m = member("p1", seed=1)
    doc = json.loads(json.dumps(update_to_doc(m, agent="gw-1", created_s=1.7e9,
                                              privacy={"noise_multiplier": 1.0, "clip": 3.0,
                                                       "epsilon": 0.5, "delta": 1e-5})))
    jsonschema.Draft202012Validator(load_schema("fleet-update")).validate(doc)
    back = update_from_doc(doc, class_name="pump-a")
    assert back.machine == "p1" and back.windows == 120
    np.testing.assert_allclose(back.location, m.location, rtol=1e-9)
    with pytest.raises(PriorRefused) as refused:
        update_from_doc(doc, class_name="fan")
    assert refused.value.reason == "wrong_class"
    bad = copy.deepcopy(doc)
    bad["features"][0]["scale"] = -1.0
    with pytest.raises(PriorRefused, match="format"):
        update_from_doc(bad)
    bad = copy.deepcopy(doc)
    bad["raw_windows"] = [[0.1]]
    with pytest.raises(PriorRefused, match="format"):
        update_from_doc(bad)


def test_the_accountant_agrees_with_dp_accounting_and_stops_at_the_budget():
    import dp_accounting
    from dp_accounting import rdp

    acc = PrivacyAccountant(budget_epsilon=3.0, delta=1e-6)
    releases = 0
    while not acc.exhausted:
        acc.spend(noise_multiplier=5.0)
        releases += 1
        reference = rdp.RdpAccountant()
        reference.compose(dp_accounting.GaussianDpEvent(5.0), 2 * releases)
        assert acc.epsilon() == pytest.approx(reference.get_epsilon(1e-6), rel=1e-9)
        assert acc.epsilon() <= 3.0
    assert releases >= 2
    assert acc.would_exceed(5.0)
    with pytest.raises(RuntimeError, match="budget"):
        acc.spend(noise_multiplier=5.0)
    # mixed noise levels compose as the library composes them
    acc2 = PrivacyAccountant(budget_epsilon=100.0, delta=1e-5)
    acc2.spend(2.0, 1)
    acc2.spend(4.0, 3)
    reference = rdp.RdpAccountant()
    reference.compose(dp_accounting.GaussianDpEvent(2.0), 1)
    reference.compose(dp_accounting.GaussianDpEvent(4.0), 3)
    assert acc2.epsilon() == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert PrivacyAccountant.from_state(acc2.state()).epsilon() == acc2.epsilon()


def test_the_bootstrap_release_adds_noise_of_the_calibrated_size_and_drops_the_autoencoder():
    m = member("p1", windows=100)
    rng = np.random.default_rng(1)
    draws = np.array([privatise(m, noise_multiplier=2.0, clip=3.0, rng=rng).location
                      for _ in range(2000)])
    sigma_scales = ((draws - m.location) / m.scale).std(axis=0)
    # replace-one sensitivity of a mean of 100 windows clipped to 3 per feature (L2 3·√3)
    np.testing.assert_allclose(sigma_scales, 2.0 * 2 * 3.0 * np.sqrt(3) / 100, rtol=0.1)
    assert privatise(m, noise_multiplier=2.0, clip=3.0, rng=rng).ae_weights is None


def healthy_windows(n=200, seed=2):
    rng = np.random.default_rng(seed)
    return np.column_stack([10 ** rng.normal(-1, 0.03, n), 10 ** rng.normal(0.48, 0.02, n),
                            rng.normal(0, 0.1, n)])


@hyp.settings(max_examples=60, deadline=None)
@hyp.given(row=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
           which=st.integers(0, 199))
def test_one_window_replaced_by_anything_moves_either_mechanism_by_at_most_its_sensitivity(
        prior, row, which):
    """The exact guarantee rests on this: whatever one window holds (junk, inf, NaN,
    a negative value of a log feature), each mechanism's mean moves by at most Δ."""
    X = healthy_windows()
    ref = Reference.from_prior(prior, NAMES)
    Y = X.copy()
    Y[which] = row
    delta = sensitivity(len(X), len(NAMES), 3.0)
    assert np.linalg.norm(clipped_level(Y, ref, 3.0) - clipped_level(X, ref, 3.0)) \
        <= delta + 1e-12
    released = prior.location + 0.3 * prior.widened_scale()  # any level already released
    assert np.linalg.norm(clipped_deviation(Y, ref, released, 3.0)
                          - clipped_deviation(X, ref, released, 3.0)) <= delta + 1e-12


def test_the_exact_release_is_standardised_on_the_prior_noised_as_calibrated_and_useful(prior):
    X = healthy_windows()
    ref = Reference.from_prior(prior, NAMES)
    assert ref.source == "prior v4" and Reference.from_prior(prior, NAMES + ("other",)) is None
    np.testing.assert_allclose(ref.unit, prior.widened_scale())
    rng = np.random.default_rng(3)
    draws = [private_summary(X, ref, class_name="pump-a", machine="p9", noise_multiplier=2.0,
                             clip=3.0, rng=rng) for _ in range(1500)]
    noiseless = prior.location + clipped_level(X, ref, 3.0) * ref.unit
    level_sigma = (np.array([d.location for d in draws]) - noiseless) / ref.unit
    np.testing.assert_allclose(level_sigma.std(axis=0), 2.0 * sensitivity(200, 3, 3.0),
                               rtol=0.1)
    # and it still says what the machine is: its own median and scale, within the noise
    own = np.array([np.median(np.log10(X[:, 0])), np.median(np.log10(X[:, 1])),
                    np.median(X[:, 2])])
    mean_location = np.mean([d.location for d in draws], axis=0)
    assert np.all(np.abs(mean_location - own) < 0.5 * np.array([0.03, 0.02, 0.1]))
    mean_scale = np.mean([d.scale for d in draws], axis=0)
    np.testing.assert_allclose(mean_scale, [0.03, 0.02, 0.1], rtol=0.25)
    assert all(d.ae_weights is None and d.windows == 200 for d in draws[:5])


def test_a_machine_with_channels_shares_each_channels_levels_and_weights():
    from edge_agent.models.prior import merge_channels

    def channel(name, level):
        m = member("p1", level)
        return MemberSummary("pump-a", "p1", tuple(f"{name}/{n}" for n in NAMES), 120 + len(name),
                             m.location, m.scale, m.log, {name: m.ae_weights[""]})

    merged = merge_channels({"de": channel("de", 0.1), "nde": channel("nde", 0.3)})
    assert merged.windows == 122 and len(merged.feature_names) == 6
    prior = aggregate([merged], class_name="pump-a", version=1, created_s=0.0)
    doc = json.loads(json.dumps(prior_to_doc(prior)))
    jsonschema.Draft202012Validator(load_schema("fleet-prior")).validate(doc)
    back = prior_from_doc(doc)
    nde = back.for_channel("nde")
    assert nde.feature_names == NAMES and nde.typical()["sustained_rms_g"] == pytest.approx(0.3)
    assert [w.shape for w in nde.ae_weights[""]] == [(3, 2), (2,), (2, 3), (3,)]
    assert back.for_channel("vertical") is None


def test_a_member_unlike_every_other_is_set_aside_but_never_a_majority():
    honest = [member(f"p{i}", level, seed=i) for i, level in enumerate((0.10, 0.12, 0.11))]
    miscalibrated = member("p9", 0.5, seed=9)  # ×4 its siblings: no sibling
    prior = aggregate(honest + [miscalibrated], class_name="pump-a", version=1, created_s=0.0)
    assert prior.provenance["excluded"] == ["p9"] and prior.members == 3
    np.testing.assert_allclose(prior.location, aggregate(honest, class_name="pump-a", version=1,
                                                         created_s=0.0).location)
    # two against two: nobody can tell which pair is right, so all four count
    split = [member("a", 0.1), member("b", 0.1), member("c", 1.0), member("d", 1.0)]
    assert aggregate(split, class_name="pump-a", version=1, created_s=0.0).provenance[
        "excluded"] == []


def test_without_the_fleet_extra_the_commands_say_what_to_install(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import sys\nsys.modules['cryptography'] = None  # as if not installed\n"
            "from edge_agent.cli import main\nsys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "fleet", "keygen", str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install 'edge-agent[fleet]'" in result.stderr
    assert not (tmp_path / "fleet.key").exists()
