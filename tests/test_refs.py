import pytest

from adapterhub.errors import InvalidInput
from adapterhub.registry.refs import Ref, parse_ref, validate_alias, validate_name


@pytest.mark.parametrize(
    "text,expected",
    [
        ("acme/bot", Ref(name="acme/bot")),
        ("acme/bot:3", Ref(name="acme/bot", version=3)),
        ("acme/bot@production", Ref(name="acme/bot", alias="production")),
        ("a.b-c_d/x.y-z_0", Ref(name="a.b-c_d/x.y-z_0")),
        ("sha256:" + "ab" * 32, Ref(digest="ab" * 32)),
        ("sha256:abcdef012345", Ref(digest="abcdef012345")),
        ("team:acme/bot@production", Ref(name="acme/bot", alias="production", remote="team")),
        ("team:acme/bot:2", Ref(name="acme/bot", version=2, remote="team")),
        ("team:sha256:" + "0" * 64, Ref(digest="0" * 64, remote="team")),
    ],
)
def test_parse_valid(text, expected):
    ref = parse_ref(text)
    assert ref == expected
    assert str(ref) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "../x",
        "A/B",
        "acme",
        "acme/",
        "/bot",
        "acme/bot/extra",
        "acme/.hidden",
        "acme/..",
        "acme/bot:0",
        "acme/bot:-1",
        "acme/bot:x",
        "acme/bot@",
        "acme/bot@Prod",
        "acme/bot@latest",
        "sha256:xyz",
        "sha256:abc",
        "acme/" + "a" * 65,
        "acme/b ot",
        "acme\\bot",
        "acme/bot@a/b",
    ],
)
def test_parse_invalid(text):
    with pytest.raises(InvalidInput) as exc:
        parse_ref(text)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["../x", "A/B", "", "x" * 200, "a/b/c", "a/-b", "a/_b", "a/b\n"])
def test_invalid_names(name):
    with pytest.raises(InvalidInput, match="invalid name"):
        validate_name(name)


def test_valid_name_and_alias():
    assert validate_name("acme/support-bot.v2") == "acme/support-bot.v2"
    assert validate_alias("production") == "production"
    with pytest.raises(InvalidInput, match="reserved"):
        validate_alias("latest")
