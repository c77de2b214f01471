# Ported from TransformerLens tests/unit/test_hook_points.py
# (TransformerLensOrg/TransformerLens @ 4cd36aaeb5dad931d085bd5d46a12b402fe15272, v3.5.1-1).
# Changed: the hook point. TransformerLens builds a standalone `HookPoint()`; here it is a hook
# point of a HookedModel (`model.hook_dict["blocks.0.hook_resid_post"]`, tiny random Llama and
# SmolLM2), and every test removes what it added (the model is shared by the module).
# The `@mock.patch("torch.utils.hooks.RemovableHandle")` decorators are dropped: they only stop
# a standalone HookPoint from registering real torch hooks, and would leak handles into the
# shared model. Not ported (see README.md): test_add_hook_prepend (mocks LensHandle and
# register_forward_hook internals), test_enable_reshape*, test_reshape_functionality_*
# (TransformerLens 4 bridge conversions), test_invalid_direction_raises_error (beartype),
# test_functional_hook_execution_still_works and test_hook_point_with_conversions (call a
# standalone HookPoint module directly).
import pytest

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture
def hook_point(model):
    hp = model.hook_dict[HOOK]
    hp.remove_hooks(dir="both", including_permanent=True)
    yield hp
    hp.remove_hooks(dir="both", including_permanent=True)


def hook(activation, hook):
    return activation


def test_add_hook_forward(hook_point):
    hook_point.add_hook(hook, dir="fwd")
    assert len(hook_point.fwd_hooks) == 1


def test_add_hook_backward(hook_point):
    hook_point.add_hook(hook, dir="bwd")
    assert len(hook_point.bwd_hooks) == 1


def test_add_hook_permanent(hook_point):
    hook_point.add_hook(hook, dir="fwd", is_permanent=True)
    assert hook_point.fwd_hooks[0].is_permanent


def test_add_hook_with_level(hook_point):
    hook_point.add_hook(hook, dir="fwd", level=5)
    assert hook_point.fwd_hooks[0].context_level == 5


class TestHookPointHasHooks:
    """Comprehensive test suite for HookPoint.has_hooks method."""

    @pytest.fixture(autouse=True)
    def setup(self, hook_point):
        """Set up fresh HookPoint and sample hook for each test."""
        self.hook_point = hook_point

        def sample_hook(activation, hook):
            return activation

        self.sample_hook = sample_hook

    def test_no_hooks_returns_false(self):
        """Test that has_hooks returns False when no hooks are present."""
        assert not self.hook_point.has_hooks()
        assert not self.hook_point.has_hooks(dir="fwd")
        assert not self.hook_point.has_hooks(dir="bwd")
        assert not self.hook_point.has_hooks(dir="both")

    def test_forward_hook_detection(self):
        """Test detection of forward hooks."""
        # Add a forward hook
        self.hook_point.add_hook(self.sample_hook, dir="fwd")

        # Should detect forward hooks
        assert self.hook_point.has_hooks()
        assert self.hook_point.has_hooks(dir="fwd")
        assert self.hook_point.has_hooks(dir="both")

        # Should not detect backward hooks
        assert not self.hook_point.has_hooks(dir="bwd")

    def test_backward_hook_detection(self):
        """Test detection of backward hooks."""
        # Add a backward hook
        self.hook_point.add_hook(self.sample_hook, dir="bwd")

        # Should detect backward hooks
        assert self.hook_point.has_hooks()
        assert self.hook_point.has_hooks(dir="bwd")
        assert self.hook_point.has_hooks(dir="both")

        # Should not detect forward hooks
        assert not self.hook_point.has_hooks(dir="fwd")

    def test_both_direction_hooks(self):
        """Test detection when both forward and backward hooks are present."""
        # Add both forward and backward hooks
        self.hook_point.add_hook(self.sample_hook, dir="fwd")
        self.hook_point.add_hook(self.sample_hook, dir="bwd")

        # All directions should detect hooks
        assert self.hook_point.has_hooks()
        assert self.hook_point.has_hooks(dir="fwd")
        assert self.hook_point.has_hooks(dir="bwd")
        assert self.hook_point.has_hooks(dir="both")

    def test_permanent_hook_detection(self):
        """Test detection of permanent hooks."""
        # Add a permanent forward hook
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=True)

        # Should detect permanent hooks by default
        assert self.hook_point.has_hooks()
        assert self.hook_point.has_hooks(including_permanent=True)

        # Should not detect when excluding permanent hooks
        assert not self.hook_point.has_hooks(including_permanent=False)

    def test_non_permanent_hook_detection(self):
        """Test detection of non-permanent hooks."""
        # Add a non-permanent forward hook
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=False)

        # Should detect non-permanent hooks regardless of including_permanent setting
        assert self.hook_point.has_hooks()
        assert self.hook_point.has_hooks(including_permanent=True)
        assert self.hook_point.has_hooks(including_permanent=False)

    def test_mixed_permanent_hooks(self):
        """Test detection with mix of permanent and non-permanent hooks."""
        # Add both permanent and non-permanent hooks
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=True)
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=False)

        # Should detect hooks in both cases
        assert self.hook_point.has_hooks(including_permanent=True)
        assert self.hook_point.has_hooks(including_permanent=False)

    def test_only_permanent_hooks(self):
        """Test detection when only permanent hooks are present."""
        # Add only permanent hooks
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=True)
        self.hook_point.add_hook(self.sample_hook, dir="bwd", is_permanent=True)

        # Should detect when including permanent
        assert self.hook_point.has_hooks(including_permanent=True)
        assert self.hook_point.has_hooks(dir="fwd", including_permanent=True)
        assert self.hook_point.has_hooks(dir="bwd", including_permanent=True)

        # Should not detect when excluding permanent
        assert not self.hook_point.has_hooks(including_permanent=False)
        assert not self.hook_point.has_hooks(dir="fwd", including_permanent=False)
        assert not self.hook_point.has_hooks(dir="bwd", including_permanent=False)

    def test_context_level_filtering(self):
        """Test context level filtering functionality."""
        # Add hooks at different context levels
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=0)
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=1)
        self.hook_point.add_hook(self.sample_hook, dir="bwd", level=2)

        # Should detect hooks at specific levels
        assert self.hook_point.has_hooks(level=0)
        assert self.hook_point.has_hooks(level=1)
        assert self.hook_point.has_hooks(level=2)

        # Should not detect hooks at non-existent levels
        assert not self.hook_point.has_hooks(level=3)
        assert not self.hook_point.has_hooks(level=-1)

        # Should detect all hooks when level is None
        assert self.hook_point.has_hooks(level=None)

    def test_context_level_with_direction(self):
        """Test context level filtering combined with direction filtering."""
        # Add hooks at different levels and directions
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=0)
        self.hook_point.add_hook(self.sample_hook, dir="bwd", level=1)

        # Test specific combinations
        assert self.hook_point.has_hooks(dir="fwd", level=0)
        assert self.hook_point.has_hooks(dir="bwd", level=1)

        # Test non-matching combinations
        assert not self.hook_point.has_hooks(dir="fwd", level=1)
        assert not self.hook_point.has_hooks(dir="bwd", level=0)

    def test_context_level_with_permanent_flags(self):
        """Test context level filtering combined with permanent hook filtering."""
        # Add permanent and non-permanent hooks at different levels
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=0, is_permanent=True)
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=1, is_permanent=False)

        # Test combinations
        assert self.hook_point.has_hooks(level=0, including_permanent=True)
        assert not self.hook_point.has_hooks(level=0, including_permanent=False)
        assert self.hook_point.has_hooks(level=1, including_permanent=True)
        assert self.hook_point.has_hooks(level=1, including_permanent=False)

    def test_all_parameters_combined(self):
        """Test all parameters combined in various ways."""
        # Create a complex setup with multiple hooks
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=0, is_permanent=True)
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=1, is_permanent=False)
        self.hook_point.add_hook(self.sample_hook, dir="bwd", level=0, is_permanent=False)
        self.hook_point.add_hook(self.sample_hook, dir="bwd", level=2, is_permanent=True)

        # Test specific combinations
        assert self.hook_point.has_hooks(dir="fwd", level=0, including_permanent=True)
        assert not self.hook_point.has_hooks(dir="fwd", level=0, including_permanent=False)
        assert self.hook_point.has_hooks(dir="fwd", level=1, including_permanent=False)
        assert self.hook_point.has_hooks(dir="bwd", level=0, including_permanent=False)
        assert not self.hook_point.has_hooks(dir="bwd", level=1, including_permanent=False)
        assert self.hook_point.has_hooks(dir="bwd", level=2, including_permanent=True)

    def test_multiple_hooks_same_criteria(self):
        """Test detection when multiple hooks match the same criteria."""
        # Add multiple hooks with same criteria
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=0, is_permanent=False)
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=0, is_permanent=False)
        self.hook_point.add_hook(self.sample_hook, dir="fwd", level=0, is_permanent=False)

        # Should still detect hooks (method returns True on first match)
        assert self.hook_point.has_hooks(dir="fwd", level=0, including_permanent=False)

    def test_hook_removal_affects_detection(self):
        """Test that removing hooks affects detection."""
        # Add a hook
        self.hook_point.add_hook(self.sample_hook, dir="fwd")
        assert self.hook_point.has_hooks()

        # Remove all hooks
        self.hook_point.remove_hooks(dir="both")
        assert not self.hook_point.has_hooks()

    def test_default_parameter_values(self):
        """Test that default parameter values work correctly."""
        # Add hooks to test defaults
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=True, level=0)
        self.hook_point.add_hook(self.sample_hook, dir="bwd", is_permanent=False, level=1)

        # Test default behavior (dir="both", including_permanent=True, level=None)
        assert self.hook_point.has_hooks()

        # This should be equivalent to:
        assert self.hook_point.has_hooks(dir="both", including_permanent=True, level=None)

    def test_edge_case_empty_after_filtering(self):
        """Test edge case where hooks exist but are filtered out."""
        # Add hooks that will be filtered out
        self.hook_point.add_hook(self.sample_hook, dir="fwd", is_permanent=True, level=5)

        # These should not detect the hook due to filtering
        assert not self.hook_point.has_hooks(including_permanent=False)
        assert not self.hook_point.has_hooks(dir="bwd")
        assert not self.hook_point.has_hooks(level=0)
        assert not self.hook_point.has_hooks(dir="bwd", level=5, including_permanent=True)
