"""The provider OpenAPI files, and a validator the fakes use so they can't drift from them.

The specs are kept in the repository, in ``tests/specs/`` (byte-for-byte copies of the providers'
files; ``tests/test_specs_drift.py`` compares them with the upstream copy when that is present). The
directory named by ``AGENT_RELAY_SPECS`` replaces them when set. If the directory or a file is missing,
:func:`spec_path` raises :class:`SpecsNotFoundError`: end-to-end tests must fail loudly rather than skip.

:class:`SpecValidator` checks one operation (path template + method) of one spec file. Everything it
checks is read from the spec (path and header parameters, security schemes, request media types and
schema, response schemas); nothing is hard-coded per provider. Schemas are JSON Schema 2020-12 (the
specs are OpenAPI 3.1); ``#/components/schemas/...`` references resolve through ``referencing``.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias
from urllib.parse import parse_qsl, unquote

import yaml
from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from bot.providers import PROVIDERS
from bot.providers.base import Capability

SPECS_ENV: Final = "AGENT_RELAY_SPECS"
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DEFAULT_SPECS_DIR: Final = REPO_ROOT / "tests" / "specs"

#: A name in :data:`bot.providers.PROVIDERS` (checked at run time: the registry is the only list).
ProviderName: TypeAlias = str


@dataclass(frozen=True, slots=True)
class ProviderOperation:
    """Where one provider's send-message operation is described."""

    spec_file: str
    path_template: str
    method: str
    text_field: str  # the request body field holding the relayed message


# Read from the spec files, not from the clients: the fakes check the clients against these.
_SEND_OPERATIONS: Final[Mapping[ProviderName, ProviderOperation]] = {
    "devin": ProviderOperation("devin-v1.yaml", "/v1/sessions/{session_id}/message", "POST", "message"),
    "feather": ProviderOperation(
        "feather.yaml", "/v1/ask-feather/sessions/{session_id}/messages", "POST", "content"
    ),
    "agen": ProviderOperation("agen.yaml", "/api/v1/sessions/{sessionId}/messages", "POST", "message"),
}


def _operations_of_registered_providers() -> dict[ProviderName, ProviderOperation]:
    missing = [name for name in PROVIDERS if name not in _SEND_OPERATIONS]
    if missing:
        raise LookupError(f"tests/fakes/specs.py describes no send-message operation for {missing}")
    return {name: _SEND_OPERATIONS[name] for name in PROVIDERS}


#: Every registered provider's send-message operation, in registry order.
PROVIDER_OPERATIONS: Final[Mapping[ProviderName, ProviderOperation]] = _operations_of_registered_providers()


@dataclass(frozen=True, slots=True)
class ReadOperation:
    """Where one provider's read-session operation is described (the ``*-read.yaml`` specs)."""

    spec_file: str
    path_template: str
    method: str = "GET"


# Read from the spec files, like the send operations.
_READ_OPERATIONS: Final[Mapping[ProviderName, ReadOperation]] = {
    "devin": ReadOperation("devin-v1-read.yaml", "/v1/sessions/{session_id}"),
    "feather": ReadOperation("feather-read.yaml", "/v1/ask-feather/sessions/{session_id}"),
    "agen": ReadOperation("agen-read.yaml", "/api/v1/sessions/{sessionId}/events"),
}


def _read_operations_of_registered_providers() -> dict[ProviderName, ReadOperation]:
    readers = [name for name, cls in PROVIDERS.items() if Capability.READ_SESSION in cls.capabilities]
    missing = [name for name in readers if name not in _READ_OPERATIONS]
    if missing:
        raise LookupError(f"tests/fakes/specs.py describes no read-session operation for {missing}")
    return {name: _READ_OPERATIONS[name] for name in readers}


#: The read-session operation of every registered provider that declares it can read sessions.
PROVIDER_READ_OPERATIONS: Final[Mapping[ProviderName, ReadOperation]] = (
    _read_operations_of_registered_providers()
)


class SpecsNotFoundError(RuntimeError):
    """The provider specs directory or one of its files is missing."""


def specs_dir() -> Path:
    """The directory holding the provider specs; raises :class:`SpecsNotFoundError` if absent."""
    override = os.environ.get(SPECS_ENV)
    directory = Path(override) if override else DEFAULT_SPECS_DIR
    if not directory.is_dir():
        how = f"${SPECS_ENV}={override!r}" if override else f"the default (set ${SPECS_ENV} to override)"
        raise SpecsNotFoundError(f"provider specs directory {directory} does not exist; it comes from {how}")
    return directory


def spec_path(filename: str) -> Path:
    """The path of one spec file; raises :class:`SpecsNotFoundError` if it is missing."""
    path = specs_dir() / filename
    if not path.is_file():
        raise SpecsNotFoundError(f"provider spec {path} is missing (specs directory: {path.parent})")
    return path


@functools.cache
def load_spec(path: Path) -> dict[str, Any]:
    """Parse one OpenAPI document (cached: the files don't change during a test run)."""
    with path.open(encoding="utf-8") as fh:
        document = yaml.safe_load(fh)
    if not isinstance(document, dict) or "paths" not in document:
        raise SpecsNotFoundError(f"{path} is not an OpenAPI document (no 'paths')")
    return document


@dataclass(frozen=True, slots=True)
class Problem:
    """One way a request breaks the spec, with a FastAPI-style location for 422 bodies."""

    loc: tuple[str | int, ...]
    msg: str
    type: str

    def __str__(self) -> str:
        where = ".".join(str(part) for part in self.loc)
        return f"{where}: {self.msg}" if where else self.msg

    def as_fastapi(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


_PARAM_RE: Final = re.compile(r"^\{([^{}/]+)\}$")


class SpecValidator:
    """Validates requests to, and responses from, one operation of one OpenAPI 3.1 file."""

    def __init__(self, spec_file: Path | str, path_template: str, method: str) -> None:
        path = Path(spec_file)
        if not path.is_absolute() and len(path.parts) == 1:
            path = spec_path(path.name)
        elif not path.is_file():
            raise SpecsNotFoundError(f"provider spec {path} is missing")
        self.spec_file: Path = path
        self.document: dict[str, Any] = load_spec(path)
        self.path_template = path_template
        self.method = method.upper()
        try:
            path_item: dict[str, Any] = self.document["paths"][path_template]
            self.operation: dict[str, Any] = path_item[method.lower()]
        except KeyError:
            raise ValueError(f"{path.name} has no operation {self.method} {path_template}") from None
        self._operation_pointer = f"/paths/{_escape(path_template)}/{method.lower()}"
        path_item_pointer = f"/paths/{_escape(path_template)}"
        # (parameter object, JSON pointer to it) so that schemas can be validated in place.
        self._parameters: list[tuple[dict[str, Any], str]] = [
            self._deref(p, f"{base}/parameters/{i}")
            for base, item in ((path_item_pointer, path_item), (self._operation_pointer, self.operation))
            for i, p in enumerate(item.get("parameters", []))
        ]
        self._segments: list[str] = path_template.strip("/").split("/")
        self._base_uri = f"urn:agent-relay-spec:{path.name}"
        self._registry: Registry[Any] = Registry().with_resource(
            self._base_uri, Resource.from_contents(self.document, default_specification=DRAFT202012)
        )
        self.security_schemes: dict[str, dict[str, Any]] = self.document.get("components", {}).get(
            "securitySchemes", {}
        )
        # Operation-level security replaces the document's; an empty list means "no auth".
        self.security: list[dict[str, list[str]]] = self.operation.get(
            "security", self.document.get("security", [])
        )

    @classmethod
    def for_provider(cls, name: ProviderName) -> SpecValidator:
        op = PROVIDER_OPERATIONS[name]
        return cls(op.spec_file, op.path_template, op.method)

    @classmethod
    def for_reading(cls, name: ProviderName) -> SpecValidator:
        """The validator of the provider's read-session operation."""
        op = PROVIDER_READ_OPERATIONS[name]
        return cls(op.spec_file, op.path_template, op.method)

    # -- helpers -------------------------------------------------------------------------------

    def _deref(self, node: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
        """Follow a local ``$ref`` (if any): the node it points to and that node's JSON pointer."""
        seen = 0
        while isinstance(ref := node.get("$ref"), str) and ref.startswith("#/"):
            pointer = ref[1:]
            target: Any = self.document
            for part in pointer[1:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            assert isinstance(target, dict), f"{ref} does not point to an object"
            node = target
            seen += 1
            assert seen < 50, f"$ref loop at {ref}"
        return node, pointer

    def _schema_validator(self, pointer: str) -> Validator:
        # Validate the schema where it sits in the document so that its "#/components/..." refs resolve.
        return Draft202012Validator(
            {"$ref": f"{self._base_uri}#{pointer}"},
            registry=self._registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )

    def _schema_problems(self, pointer: str, instance: object, loc: tuple[str | int, ...]) -> list[Problem]:
        errors = sorted(
            self._schema_validator(pointer).iter_errors(instance), key=lambda e: list(map(str, e.path))
        )
        return [
            Problem((*loc, *error.absolute_path), error.message, str(error.validator)) for error in errors
        ]

    def match(self, path: str) -> dict[str, str] | None:
        """Percent-decoded path parameters if ``path`` (raw, query ignored) fits the template."""
        raw = path.split("?", 1)[0]
        segments = raw.strip("/").split("/")
        if not raw.startswith("/") or len(segments) != len(self._segments):
            return None
        values: dict[str, str] = {}
        for template, segment in zip(self._segments, segments, strict=True):
            param = _PARAM_RE.match(template)
            if param is None:
                if unquote(segment) != template:
                    return None
            elif not segment:
                return None
            else:
                values[param.group(1)] = unquote(segment)
        return values

    def credentials(self, headers: Mapping[str, str], query: Mapping[str, str] | None = None) -> str | None:
        """The credential the request presents for the first security scheme the spec names, if any."""
        lowered = {k.lower(): v for k, v in headers.items()}
        for requirement in self.security:
            for scheme_name in requirement:
                value = self._credential(self.security_schemes.get(scheme_name, {}), lowered, query or {})
                if value:
                    return value
        return None

    @staticmethod
    def _credential(
        scheme: dict[str, Any], headers: Mapping[str, str], query: Mapping[str, str]
    ) -> str | None:
        kind = scheme.get("type")
        if kind == "apiKey":
            name = str(scheme.get("name", "")).lower()
            where = scheme.get("in")
            if where == "header":
                return headers.get(name)
            if where == "query":
                return {k.lower(): v for k, v in query.items()}.get(name)
            return None
        if kind == "http":
            auth = headers.get("authorization", "")
            wanted = str(scheme.get("scheme", "bearer")).lower()
            prefix, _, value = auth.partition(" ")
            return value.strip() if prefix.lower() == wanted else None
        return None

    def _security_problems(self, headers: Mapping[str, str], query: Mapping[str, str]) -> list[Problem]:
        if not self.security or any(not requirement for requirement in self.security):
            return []
        lowered = {k.lower(): v for k, v in headers.items()}
        failures: list[Problem] = []
        for requirement in self.security:  # alternatives: one satisfied requirement is enough
            missing: list[Problem] = []
            for scheme_name in requirement:
                scheme = self.security_schemes.get(scheme_name)
                if scheme is None:
                    missing.append(Problem((), f"spec names unknown security scheme {scheme_name}", "spec"))
                    continue
                value = self._credential(scheme, lowered, query)
                if not value or not value.strip():
                    missing.append(self._describe_missing(scheme_name, scheme))
            if not missing:
                return []
            failures.extend(missing)
        return failures

    @staticmethod
    def _describe_missing(scheme_name: str, scheme: dict[str, Any]) -> Problem:
        if scheme.get("type") == "apiKey":
            where = str(scheme.get("in", "header"))
            name = str(scheme.get("name", ""))
            return Problem(
                (where, name), f"security scheme {scheme_name}: {where} {name!r} missing or empty", "missing"
            )
        http_scheme = str(scheme.get("scheme", "bearer")).capitalize()
        return Problem(
            ("header", "Authorization"),
            f"security scheme {scheme_name}: expected 'Authorization: {http_scheme} <credential>'"
            " with a non-empty credential",
            "missing",
        )

    # -- requests ------------------------------------------------------------------------------

    def check(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> list[Problem]:
        """Every way the request breaks the spec (empty when it is valid)."""
        problems: list[Problem] = []
        if method.upper() != self.method:
            problems.append(
                Problem((), f"method {method.upper()} not allowed; spec says {self.method}", "method")
            )
        raw_path, _, raw_query = path.partition("?")
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        values = self.match(raw_path)
        lowered = {k.lower(): v for k, v in headers.items()}
        if values is None:
            problems.append(Problem(("path",), f"{raw_path!r} does not match {self.path_template}", "path"))
        for param, param_pointer in self._parameters:
            where, name = param.get("in"), str(param.get("name"))
            if where == "path":
                present: dict[str, str] | None = values
            elif where == "header":
                present = lowered
                name = name.lower()
            elif where == "query":
                present = query
            else:
                continue
            if present is None:
                continue
            if name not in present:
                if param.get("required", where == "path"):
                    problems.append(Problem((str(where), name), "required parameter missing", "missing"))
                continue
            if isinstance(param.get("schema"), dict):
                problems += self._schema_problems(
                    f"{param_pointer}/schema", present[name], (str(where), name)
                )
        problems += self._security_problems(headers, query)
        problems += self._body_problems(lowered, body)
        return problems

    def _body_problems(self, headers: Mapping[str, str], body: bytes) -> list[Problem]:
        if "requestBody" not in self.operation:
            return []
        request_body, body_pointer = self._deref(
            self.operation["requestBody"], f"{self._operation_pointer}/requestBody"
        )
        content: dict[str, Any] = request_body.get("content", {})
        if not body and not request_body.get("required", False):
            return []
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type not in content:
            allowed = ", ".join(content) or "(none)"
            return [
                Problem(
                    ("header", "Content-Type"),
                    f"Content-Type {media_type or '(missing)'!r} not allowed; spec says {allowed}",
                    "content_type",
                )
            ]
        if not body:
            return [Problem(("body",), "request body is required", "missing")]
        if media_type != "application/json" and not media_type.endswith("+json"):
            return []
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            return [Problem(("body",), f"body is not valid JSON: {exc}", "json_invalid")]
        if not isinstance(content[media_type].get("schema"), dict):
            return []
        schema_pointer = f"{body_pointer}/content/{_escape(media_type)}/schema"
        return self._schema_problems(schema_pointer, document, ("body",))

    def validate(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> list[str]:
        """Human-readable problems with the request (empty list = valid)."""
        return [str(p) for p in self.check(method, path, headers, body)]

    # -- responses -----------------------------------------------------------------------------

    def response_spec(self, status: int, *, use_default: bool = True) -> tuple[dict[str, Any], str] | None:
        """The response object for ``status`` (exact, then ``NXX``, then ``default``) and its pointer."""
        responses: dict[str, Any] = self.operation.get("responses", {})
        keys = [str(status), f"{status // 100}XX", *(["default"] if use_default else [])]
        for key in keys:
            if key in responses:
                return self._deref(responses[key], f"{self._operation_pointer}/responses/{key}")
        return None

    def validate_response(self, status: int, body: object, *, use_default: bool = True) -> list[str]:
        """Problems with a JSON response body the fake is about to send (empty = fine or unspecified).

        ``use_default=False`` skips ``default``: agen.yaml's ``default`` describes the success body and
        says nothing about errors, so error bodies are only checked against explicitly declared codes.
        """
        found = self.response_spec(status, use_default=use_default)
        if found is None:
            return []
        response, pointer = found
        media = response.get("content", {}).get("application/json")
        if not isinstance(media, dict) or not isinstance(media.get("schema"), dict):
            return []
        schema_pointer = f"{pointer}/content/{_escape('application/json')}/schema"
        return [str(p) for p in self._schema_problems(schema_pointer, body, ("response", status))]


def _escape(token: str) -> str:
    """Escape one JSON pointer token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")
