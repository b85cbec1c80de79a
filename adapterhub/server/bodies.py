"""The JSON bodies the registry server's API accepts, with the bounds pydantic enforces before a handler runs
(lengths of names, refs and lists: a request can never make the server build something unbounded)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class FileSpec(BaseModel):
    path: str = Field(max_length=1024)
    sha256: str = Field(min_length=64, max_length=64)
    size: int = Field(ge=0)


class ParentBody(BaseModel):
    relation: str = Field(max_length=32)
    ref: str | None = Field(default=None, max_length=300)
    digest: str | None = Field(default=None, max_length=64)
    details: dict[str, Any] | None = None


class PublishBody(BaseModel):
    name: str = Field(max_length=129)
    manifest: dict[str, Any]
    files: list[FileSpec] = Field(max_length=10_000)
    parents: list[ParentBody] = Field(default_factory=list, max_length=1000)
    aliases: list[str] = Field(default_factory=list, max_length=100)
    tags: dict[str, str] = Field(default_factory=dict)
    base: dict[str, Any] | None = None
    kind: str = Field(default="adapter", max_length=32)


class AliasBody(BaseModel):
    name: str = Field(max_length=129)
    alias: str = Field(max_length=64)
    version: str = Field(max_length=300)
    reason: str | None = Field(default=None, max_length=2000)
    force: bool = False
    gate: bool = False


class AliasRemoveBody(BaseModel):
    name: str = Field(max_length=129)
    alias: str = Field(max_length=64)
    reason: str | None = Field(default=None, max_length=2000)


class TagBody(BaseModel):
    ref: str = Field(max_length=300)
    set: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class EvaluationBody(BaseModel):
    ref: str = Field(max_length=300)
    data_digest: str = Field(max_length=71)
    metrics: dict[str, Any]
    details: dict[str, Any] | None = None


class TokenBody(BaseModel):
    name: str = Field(max_length=64)
    scope: str = Field(max_length=16)
    namespace: str | None = Field(default=None, max_length=64)
    expires: str | None = Field(default=None, max_length=16)


class GcBody(BaseModel):
    grace: float = 600.0
    dry_run: bool = False


class DigestsBody(BaseModel):
    digests: list[str] = Field(max_length=10_000)
