"""Query parameters and reply blocks of paginated lists, for every service that pages.

`Pagination` takes either style a client may know and answers the full block (product, order, payment):

    ?page=2&pageSize=20       or      ?limit=20&offset=20
    {total, limit, offset, page, pageSize, totalPages}

`PageQuery` takes pages only and answers `PageInfo` {page, pageSize, total, totalPages} (notification,
broadcast). Both count pages from 1 and allow DEFAULT_PAGE_SIZE and at most MAX_PAGE_SIZE items a page.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from services.kit.errors import ValidationFailed
from services.kit.models import CamelModel

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_PAGE = 1_000_000
MAX_OFFSET = 100_000_000


def total_pages(total: int, page_size: int) -> int:
    """Pages that `total` items fill, the last one possibly short; 0 when there are none."""
    return -(-total // page_size)


class Pagination(CamelModel):
    """Query parameters of a list: page/pageSize or limit/offset (not both)."""

    page: int | None = Field(None, ge=1, le=MAX_PAGE, description="Page number, from 1 (with pageSize).")
    page_size: int | None = Field(
        None, ge=1, le=MAX_PAGE_SIZE, description=f"Items per page (default {DEFAULT_PAGE_SIZE})."
    )
    limit: int | None = Field(None, ge=1, le=MAX_PAGE_SIZE, description="Items to return (with offset).")
    offset: int | None = Field(None, ge=0, le=MAX_OFFSET, description="Items to skip (with limit).")

    def window(self) -> tuple[int, int]:
        """(limit, offset) for SQL; 422 when the two styles are mixed."""
        paged = self.page is not None or self.page_size is not None
        sliced = self.limit is not None or self.offset is not None
        if paged and sliced:
            field = "limit" if self.limit is not None else "offset"
            raise ValidationFailed(
                details=[{"field": field, "message": "use page/pageSize or limit/offset, not both", "type": "mixed"}]
            )
        if sliced:
            return self.limit or DEFAULT_PAGE_SIZE, self.offset or 0
        size = self.page_size or DEFAULT_PAGE_SIZE
        return size, ((self.page or 1) - 1) * size

    def meta(self, total: int) -> dict[str, int]:
        """The reply's pagination block (PAGINATION_SCHEMA)."""
        limit, offset = self.window()
        return {
            "total": total,
            "limit": limit,
            "offset": offset,
            # An offset between pages is reported as the page it starts in; offset says exactly where.
            "page": offset // limit + 1,
            "pageSize": limit,
            "totalPages": total_pages(total, limit),
        }


PAGINATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["total", "limit", "offset", "page", "pageSize", "totalPages"],
    "properties": {name: {"type": "integer", "minimum": 0} for name in ("total", "limit", "offset", "pageSize")}
    | {"page": {"type": "integer", "minimum": 1}, "totalPages": {"type": "integer", "minimum": 0}},
}
"""JSON Schema of Pagination.meta's block, for OpenAPI documents."""


class PageInfo(CamelModel):
    """Where a page of a list stands: its number and size, the items in all and the pages they fill."""

    page: int
    page_size: int
    total: int
    total_pages: int

    @classmethod
    def of(cls, page: int, page_size: int, total: int) -> PageInfo:
        return cls(page=page, page_size=page_size, total=total, total_pages=total_pages(total, page_size))


class PageQuery(CamelModel):
    """Query parameters of a list that pages only: page and pageSize, both with defaults."""

    page: int = Field(1, ge=1, le=MAX_PAGE, description="Page number, from 1.")
    page_size: int = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Items per page.")

    def window(self) -> tuple[int, int]:
        """(limit, offset) for SQL."""
        return self.page_size, (self.page - 1) * self.page_size

    def page_info(self, total: int) -> PageInfo:
        """The reply's pagination block."""
        return PageInfo.of(self.page, self.page_size, total)
