"""Validation of SQL identifiers taken from job parameters; quoting is left to the dialect."""

import re
from dataclasses import dataclass

import sqlalchemy as sa

from etl_pipelines.errors import JobInputError

# Plain identifiers only: letters, digits and underscores, not starting with a digit, within
# PostgreSQL's 63-byte limit. Anything else (quotes, spaces, semicolons) is refused, not escaped.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class IdentifierError(JobInputError):
    """A table or column name that is not a plain SQL identifier, or is outside the allowed schemas."""


def check_identifier(name: str, what: str = "identifier") -> str:
    """Return `name` if it is a plain SQL identifier, else raise IdentifierError."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise IdentifierError(
            f"invalid {what} {name!r}: use letters, digits and underscores (at most 63, "
            "not starting with a digit)"
        )
    return name


@dataclass(frozen=True)
class TableName:
    """A validated, optionally schema-qualified table name."""

    schema: str | None
    name: str

    @classmethod
    def parse(cls, value: str) -> "TableName":
        """Parse `table` or `schema.table`, validating each part."""
        if not isinstance(value, str):
            raise IdentifierError(f"invalid table name {value!r}: expected a string")
        parts = value.split(".")
        if len(parts) > 2:
            raise IdentifierError(f"invalid table name {value!r}: expected table or schema.table")
        if len(parts) == 2:
            schema, name = parts
            return cls(check_identifier(schema, "schema name"), check_identifier(name, "table name"))
        return cls(None, check_identifier(parts[0], "table name"))

    def check_schema(self, allowed: tuple[str, ...]) -> "TableName":
        """Require a schema among `allowed` (ETL_ALLOWED_SCHEMAS), for destructive jobs."""
        if self.schema is None or self.schema not in allowed:
            raise IdentifierError(
                f"table {self} is not in an allowed schema; destructive jobs only touch "
                f"schema-qualified tables in ETL_ALLOWED_SCHEMAS ({', '.join(allowed)})"
            )
        return self

    def quoted(self, dialect: sa.engine.Dialect) -> str:
        """The name quoted by `dialect`'s identifier preparer, ready to place in a statement."""
        preparer = dialect.identifier_preparer
        table = preparer.quote(self.name)
        return f"{preparer.quote_schema(self.schema)}.{table}" if self.schema else table

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name
