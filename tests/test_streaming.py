"""Resumable generation: chunks, priming, saved and copied states, streams joining and leaving."""
import pytest
import torch

from nvwavenet import NVWaveNet
from nvwavenet.state import (concat_states, copy_state, load_state, move_to_position, save_state,
                             select_streams)
from nvwavenet.testing import generate_in_chunks, random_cond_input, random_nv_wavenet_args

R, L, T = 8, 6, 40


@pytest.fixture(scope="module")
def net():
    return NVWaveNet(**random_nv_wavenet_args(R, 16, 32, L, 4, seed=1))


@pytest.fixture(scope="module")
def data():
    cond = random_cond_input(R, 3, L, T, seed=2)
    u = torch.rand(3, T, generator=torch.Generator().manual_seed(3))
    return cond, u


@pytest.mark.parametrize("chunks", [[1] * T, [2, 3, 5, 7, 11, 12], [39, 1], [T], [13, 0, 27]])
def test_chunked_equals_one_shot(net, data, chunks):
    cond, u = data
    whole = net.infer(cond, selectors=u)
    chunked, _, state = generate_in_chunks(net, cond, u, chunks)
    assert torch.equal(chunked, whole)
    assert int(state["position"]) == T


def test_prime_runs_teacher_forced_then_free(net, data):
    cond, u = data
    prime = torch.randint(0, 32, (3, 9), generator=torch.Generator().manual_seed(4))
    primed, logits = net.infer(cond, selectors=u, prime=prime, return_logits=True)
    assert torch.equal(primed[:, :9], prime.to(torch.int32))
    state = net.init_state(3)
    _, forced_logits = net.infer(cond[..., :9], selectors=u[:, :9], teacher_forcing=prime, state=state,
                                 return_logits=True)
    rest = net.infer(cond[..., 9:], selectors=u[:, 9:], state=state)
    assert torch.equal(primed[:, 9:], rest)
    assert torch.equal(logits[..., :9], forced_logits)
    assert logits.shape == (3, 32, T)


def test_prime_errors_are_named(net, data):
    cond, u = data
    with pytest.raises(ValueError, match="prime.*at most"):
        net.infer(cond, prime=torch.zeros(3, T + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="prime"):
        net.infer(cond, prime=torch.zeros(3, 2, dtype=torch.long), teacher_forcing=torch.zeros(3, T, dtype=torch.long))
    with pytest.raises(TypeError, match="prime"):
        net.infer(cond, prime=torch.zeros(3, 2))


def test_saved_and_copied_states_continue_exactly(net, data, tmp_path):
    cond, u = data
    whole = net.infer(cond, selectors=u)
    first, _, state = generate_in_chunks(net, cond, u, [17])
    save_state(state, tmp_path / "state.safetensors")
    spare = copy_state(state)
    restored = load_state(tmp_path / "state.safetensors")
    for resumed in (state, spare, restored):
        rest = net.infer(cond[..., 17:], selectors=u[:, 17:], state=resumed)
        assert torch.equal(torch.cat([first, rest], dim=1), whole)


def test_load_state_refuses_other_files(tmp_path):
    from safetensors.torch import save_file
    save_file({"weights": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="path"):
        load_state(tmp_path / "x.safetensors")
    damaged = {"queues": torch.zeros(1, 4, 2), "history": torch.zeros(1, 2, dtype=torch.int32),
               "position": torch.tensor(3)}
    damaged["queues"][0, 2, 1] = float("nan")
    save_file(damaged, str(tmp_path / "damaged.safetensors"))
    with pytest.raises(ValueError, match="path: .*NaN or infinite"):
        load_state(tmp_path / "damaged.safetensors")


def test_a_stream_restarted_mid_run_equals_a_fresh_stream_and_disturbs_no_other(net, data):
    cond, u = data
    state = net.init_state(3)
    before = net.infer(cond[..., :15], selectors=u[:, :15], state=state)
    net.reset_streams(state, [1])
    # Stream 1 now starts a new utterance, with the conditioning of that utterance's start.
    new_cond = cond.clone()
    new_cond[:, 1, :, 15:] = cond[:, 1, :, :T - 15]
    new_u = u.clone()
    new_u[1, 15:] = u[1, :T - 15]
    after = net.infer(new_cond[..., 15:], selectors=new_u[:, 15:], state=state)
    alone = net.infer(cond[:, 1:2, :, :T - 15], selectors=u[1:2, :T - 15])
    assert torch.equal(after[1], alone[0])
    undisturbed = net.infer(cond, selectors=u)
    assert torch.equal(torch.cat([before, after], dim=1)[[0, 2]], undisturbed[[0, 2]])


def test_streams_leave_and_join_at_chunk_boundaries(net, data):
    cond, u = data
    whole = net.infer(cond, selectors=u)
    state = net.init_state(3)
    net.infer(cond[..., :11], selectors=u[:, :11], state=state)
    # Stream 1 leaves; a fresh stream joins, started 11 steps later than the others.
    late_state = net.init_state(1)
    joined = concat_states([select_streams(state, [0, 2]), late_state], net.weights.dilations)
    late_cond = random_cond_input(R, 1, L, T - 11, seed=5)
    late_u = torch.rand(1, T - 11, generator=torch.Generator().manual_seed(6))
    step_cond = torch.cat([cond[:, [0, 2], :, 11:], late_cond], dim=1)
    out = net.infer(step_cond, selectors=torch.cat([u[[0, 2], 11:], late_u]), state=joined)
    assert torch.equal(out[:2], whole[[0, 2], 11:])
    assert torch.equal(out[2], net.infer(late_cond, selectors=late_u)[0])


def test_concat_aligns_states_made_at_different_positions(net, data):
    cond, u = data
    a = net.init_state(1)
    net.infer(cond[:, :1, :, :7], selectors=u[:1, :7], state=a)
    b = net.init_state(1)
    net.infer(cond[:, 1:2, :, :13], selectors=u[1:2, :13], state=b)
    joined = concat_states([a, b], net.weights.dilations)
    steps = 9
    cond_next = torch.cat([cond[:, :1, :, 7:7 + steps], cond[:, 1:2, :, 13:13 + steps]], dim=1)
    u_next = torch.cat([u[:1, 7:7 + steps], u[1:2, 13:13 + steps]])
    out = net.infer(cond_next, selectors=u_next, state=joined)
    assert torch.equal(out[0], net.infer(cond[:, :1, :, :7 + steps], selectors=u[:1, :7 + steps])[0, 7:])
    assert torch.equal(out[1], net.infer(cond[:, 1:2, :, :13 + steps], selectors=u[1:2, :13 + steps])[0, 13:])


def test_moved_state_is_equivalent(net, data):
    cond, u = data
    state = net.init_state(3)
    net.infer(cond[..., :10], selectors=u[:, :10], state=state)
    moved = move_to_position(state, 1234, net.weights.dilations)
    assert torch.equal(net.infer(cond[..., 10:], selectors=u[:, 10:], state=moved),
                       net.infer(cond[..., 10:], selectors=u[:, 10:], state=copy_state(state)))


def test_history_outside_the_classes_is_refused(net, data):
    """A state of a network with more classes must not reach the engines' embedding look-ups."""
    cond, u = data
    for bad in (net.A, -1):
        state = net.init_state(3)
        state["history"][1, 0] = bad
        with pytest.raises(ValueError, match=r"state\['history'\]: expected classes in \[0, 32\)"):
            net.infer(cond, selectors=u, state=state)


def test_stream_indices_are_checked(net):
    with pytest.raises(ValueError, match="streams"):
        net.reset_streams(net.init_state(2), [2])
    # Not indices at all: a float or a bool would otherwise be truncated to a stream silently.
    for not_indices in ([1.5], torch.tensor([0.7]), [True], None, "0"):
        with pytest.raises(TypeError, match="streams"):
            net.reset_streams(net.init_state(2), not_indices)
    state = net.init_state(3)
    net.reset_streams(state, torch.tensor(1))
    assert select_streams(state, (0, 2))["queues"].shape[0] == 2


def test_state_helpers_name_what_is_not_a_state(net, tmp_path):
    state, dilations = net.init_state(2), net.weights.dilations
    with pytest.raises(TypeError, match=r"^state:"):
        copy_state({"queues": state["queues"]})
    with pytest.raises(TypeError, match=r"state\['history'\]"):
        save_state({**state, "history": [[0, 0]]}, tmp_path / "state.safetensors")
    with pytest.raises(TypeError, match=r"^states: expected a list"):
        concat_states(state, dilations)
    with pytest.raises(TypeError, match=r"^states\[1\]"):
        concat_states([state, 5], dilations)
    other = NVWaveNet(**random_nv_wavenet_args(R, 16, 32, L + 1, 4, seed=1)).init_state(1)
    with pytest.raises(ValueError, match=r"^states\[1\]: expected queues"):
        concat_states([state, other], dilations)
    with pytest.raises(ValueError, match="position"):
        move_to_position(state, -1, dilations)


def test_chunks_drawing_from_one_cpu_generator_equal_one_call(net, data):
    cond, _ = data
    whole = net.infer(cond, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    state = net.init_state(3)
    parts = [net.infer(cond[..., a:b], generator=g, state=state) for a, b in [(0, 5), (5, 6), (6, 29), (29, T)]]
    assert torch.equal(torch.cat(parts, dim=1), whole)
