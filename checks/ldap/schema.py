"""The server's own schema, compiled for checking entries one at a time: required attributes,
allowed attributes, one structural class chain, single-valued attributes, DN-valued attributes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Set, Tuple

DN_SYNTAX = "1.3.6.1.4.1.1466.115.121.1.12"
NAME_AND_OPTIONAL_UID_SYNTAX = "1.3.6.1.4.1.1466.115.121.1.34"
EXTENSIBLE_OBJECT = "extensibleobject"


@dataclass
class AttributeType:
    key: str  # the primary name, lower case
    name: str  # the primary name as the schema spells it
    superior: str | None = None
    syntax: str | None = None
    single_value: bool = False
    operational: bool = False


@dataclass
class ObjectClass:
    key: str
    name: str
    kind: str = "STRUCTURAL"
    superiors: Tuple[str, ...] = ()
    must: Tuple[str, ...] = ()
    may: Tuple[str, ...] = ()


@dataclass
class Problem:
    """One way an entry breaks the schema: a finding code, the attribute concerned, what is wrong."""

    code: str
    attribute: str
    message: str


@dataclass
class _Classes:
    """What a set of object class values means, worked out once per distinct set."""

    unknown: List[str] = field(default_factory=list)
    must: Set[str] = field(default_factory=set)
    allowed: Set[str] = field(default_factory=set)
    extensible: bool = False
    structural_problem: Problem | None = None


def _names(info) -> List[str]:
    names = info.name or []
    return [names] if isinstance(names, str) else list(names)


def _listed(value) -> List[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


class Schema:
    """Attribute types and object classes by every name and OID they are known by."""

    def __init__(
        self,
        attribute_types: Iterable[AttributeType],
        object_classes: Iterable[ObjectClass],
        aliases: Dict[str, str],
        class_aliases: Dict[str, str],
    ):
        self.attributes: Dict[str, AttributeType] = {a.key: a for a in attribute_types}
        self.classes: Dict[str, ObjectClass] = {c.key: c for c in object_classes}
        # lower-case name or OID -> primary key, of attribute types and of object classes
        self.aliases: Dict[str, str] = dict(aliases)
        self.class_aliases: Dict[str, str] = dict(class_aliases)
        self._cache: Dict[FrozenSet[str], _Classes] = {}

    @classmethod
    def from_definitions(cls, attribute_types: Iterable[str], object_classes: Iterable[str]) -> Schema:
        """Compile the `attributeTypes` and `objectClasses` values of a subschema entry."""
        from ldap3.protocol.rfc4512 import AttributeTypeInfo, ObjectClassInfo

        aliases: Dict[str, str] = {}
        attributes = []
        for info in _parse(AttributeTypeInfo, attribute_types):
            names = _names(info) or [info.oid]
            key = names[0].lower()
            for alias in [*names, info.oid]:
                aliases[alias.lower()] = key
            attributes.append(
                AttributeType(
                    key=key,
                    name=names[0],
                    superior=(_listed(info.superior) or [None])[0],
                    syntax=info.syntax,
                    single_value=bool(info.single_value),
                    operational=bool(info.usage) and info.usage != "USER_APPLICATION",
                )
            )
        classes = []
        class_aliases: Dict[str, str] = {}
        for info in _parse(ObjectClassInfo, object_classes):
            names = _names(info) or [info.oid]
            key = names[0].lower()
            for alias in [*names, info.oid]:
                class_aliases[alias.lower()] = key
            classes.append(
                ObjectClass(
                    key=key,
                    name=names[0],
                    kind=(info.kind or "STRUCTURAL").upper(),
                    superiors=tuple(s.lower() for s in _listed(info.superior)),
                    must=tuple(a.lower() for a in _listed(info.must_contain)),
                    may=tuple(a.lower() for a in _listed(info.may_contain)),
                )
            )
        schema = cls(attributes, classes, aliases, class_aliases)
        # MUST/MAY/SUP name their targets by any alias: resolve them once.
        for attribute in schema.attributes.values():
            if attribute.superior:
                attribute.superior = aliases.get(attribute.superior.lower(), attribute.superior.lower())
        for oc in schema.classes.values():
            oc.superiors = tuple(class_aliases.get(s, s) for s in oc.superiors)
            oc.must = tuple(aliases.get(a, a) for a in oc.must)
            oc.may = tuple(aliases.get(a, a) for a in oc.may)
        return schema

    def attribute(self, name: str) -> AttributeType | None:
        """The attribute type of an attribute description (options like `;lang-en` ignored)."""
        key = self.aliases.get(name.split(";", 1)[0].lower())
        return self.attributes.get(key) if key else None

    def _inherited(self, key: str, what: str):
        """`what` (the syntax) of an attribute type, following SUP when it has none."""
        seen = set()
        attribute = self.attributes.get(key)
        while attribute is not None and attribute.key not in seen:
            seen.add(attribute.key)
            value = getattr(attribute, what)
            if value:
                return value
            attribute = self.attributes.get(attribute.superior) if attribute.superior else None
        return None

    def dn_valued(self) -> Set[str]:
        """Primary keys of the user attribute types whose values are DNs (by syntax, inherited)."""
        return {
            key
            for key, attribute in self.attributes.items()
            if not attribute.operational
            and self._inherited(key, "syntax") in (DN_SYNTAX, NAME_AND_OPTIONAL_UID_SYNTAX)
        }

    def _superclasses(self, key: str) -> Set[str]:
        result: Set[str] = set()
        todo = [key]
        while todo:
            current = todo.pop()
            if current in result:
                continue
            result.add(current)
            oc = self.classes.get(current)
            if oc:
                todo.extend(oc.superiors)
        return result

    def _classes(self, values: FrozenSet[str]) -> _Classes:
        cached = self._cache.get(values)
        if cached is not None:
            return cached
        info = _Classes()
        closure: Set[str] = set()
        for value in sorted(values):
            key = self.class_aliases.get(value)
            if key is None:
                info.unknown.append(value)
                continue
            closure |= self._superclasses(key)
        structural = [k for k in closure if k in self.classes and self.classes[k].kind == "STRUCTURAL"]
        for key in closure:
            oc = self.classes.get(key)
            if oc:
                info.must.update(oc.must)
                info.allowed.update(oc.must)
                info.allowed.update(oc.may)
        info.extensible = EXTENSIBLE_OBJECT in closure
        info.structural_problem = self._structural_problem(structural)
        if len(self._cache) < 10000:
            self._cache[values] = info
        return info

    def _structural_problem(self, structural: List[str]) -> Problem | None:
        if not structural:
            return Problem("no-structural-class", "objectClass", "the entry has no structural object class")
        # One chain: a most specific class whose superclasses include every other structural one.
        for key in structural:
            if set(structural) <= self._superclasses(key):
                return None
        names = ", ".join(sorted(self.classes[k].name for k in structural))
        return Problem(
            "structural-class-conflict",
            "objectClass",
            f"the entry has structural object classes that are not one chain: {names}",
        )

    def _allowed(self, key: str, allowed: Set[str]) -> bool:
        """An attribute is allowed when it or one of its supertypes is (as slapd decides)."""
        seen = set()
        while key and key not in seen:
            if key in allowed:
                return True
            seen.add(key)
            attribute = self.attributes.get(key)
            key = attribute.superior if attribute else None
        return False

    def check(self, attributes: Dict[str, list]) -> List[Problem]:
        """How an entry (attribute description -> values) breaks this schema."""
        problems: List[Problem] = []
        present: Dict[str, str] = {}
        object_classes: Set[str] = set()
        for name, values in attributes.items():
            attribute = self.attribute(name)
            if attribute is None:
                problems.append(Problem("unknown-attribute", name, f"attribute {name} is not in the schema"))
                continue
            present.setdefault(attribute.key, name)
            if attribute.key == "objectclass":
                object_classes.update(_text(v).strip().lower() for v in values)
            if len(values) > 1 and attribute.single_value:
                problems.append(
                    Problem(
                        "single-value-violated",
                        name,
                        f"single-valued attribute {name} has {len(values)} values",
                    )
                )
        info = self._classes(frozenset(object_classes))
        for value in info.unknown:
            problems.append(
                Problem("unknown-object-class", "objectClass", f"object class {value} is not in the schema")
            )
        if not info.unknown and info.structural_problem:
            problems.append(info.structural_problem)
        for key in sorted(info.must):
            if key not in present:
                name = self.attributes[key].name if key in self.attributes else key
                problems.append(
                    Problem("missing-required-attribute", name, f"required attribute {name} is missing")
                )
        if not info.extensible and not info.unknown:
            for key, name in present.items():
                if self.attributes[key].operational or self._allowed(key, info.allowed):
                    continue
                problems.append(
                    Problem(
                        "attribute-not-allowed",
                        name,
                        f"attribute {name} is not allowed by the object classes",
                    )
                )
        return problems


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _parse(info_class, definitions: Iterable[str]):
    """Parse definitions one by one, so a single bad one is skipped rather than fatal."""
    for definition in definitions:
        try:
            parsed = info_class.from_definition([_text(definition)])
        except Exception:  # ldap3 raises plain exceptions on malformed definitions
            continue
        seen = set()
        for info in parsed.values() if hasattr(parsed, "values") else ():
            if id(info) not in seen:
                seen.add(id(info))
                yield info
