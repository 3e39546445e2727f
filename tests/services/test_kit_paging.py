"""List pagination of the kit: either style of query and the reply's block, for both contracts."""
from __future__ import annotations

import pytest

from services.kit import PageInfo, PageQuery, Pagination, ValidationFailed
from services.kit.models import parse_model


@pytest.mark.parametrize(
    ("query", "window", "meta"),
    [
        ({}, (20, 0), {"page": 1, "pageSize": 20}),
        ({"page": "3", "pageSize": "10"}, (10, 20), {"page": 3, "pageSize": 10}),
        ({"limit": "5", "offset": "15"}, (5, 15), {"page": 4, "pageSize": 5}),
        ({"offset": "7"}, (20, 7), {"page": 1, "pageSize": 20}),
    ],
    ids=["defaults", "page-style", "limit-style", "offset-alone"],
)
def test_pagination_takes_either_style(query: dict[str, str], window: tuple[int, int], meta: dict[str, int]) -> None:
    page = Pagination.model_validate(query)
    assert page.window() == window
    block = page.meta(total=42)
    assert {key: block[key] for key in meta} == meta
    assert (block["total"], block["limit"], block["offset"]) == (42, *window)
    assert block["totalPages"] == -(-42 // window[0])


@pytest.mark.parametrize(
    ("query", "field"),
    [({"page": "2", "limit": "5"}, "limit"), ({"pageSize": "5", "offset": "10"}, "offset")],
    ids=["page-and-limit", "page-size-and-offset"],
)
def test_pagination_refuses_mixed_styles(query: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        Pagination.model_validate(query).window()
    assert raised.value.details == [
        {"field": field, "message": "use page/pageSize or limit/offset, not both", "type": "mixed"}
    ]


@pytest.mark.parametrize(
    ("total", "page_size", "pages"),
    [(0, 20, 0), (1, 20, 1), (20, 20, 1), (21, 20, 2), (3, 2, 2)],
    ids=["empty", "one", "exactly-full", "one-over", "odd"],
)
def test_page_info_counts_the_last_short_page(total: int, page_size: int, pages: int) -> None:
    info = PageQuery(page=2, page_size=page_size).page_info(total)
    assert info.model_dump(by_alias=True) == {"page": 2, "pageSize": page_size, "total": total, "totalPages": pages}
    assert info == PageInfo.of(2, page_size, total)
    assert Pagination(page=2, page_size=page_size).meta(total)["totalPages"] == pages


@pytest.mark.parametrize(
    ("query", "window"),
    [({}, (20, 0)), ({"page": "3", "pageSize": "10"}, (10, 20)), ({"pageSize": "100"}, (100, 0))],
    ids=["defaults", "third-page", "largest-page"],
)
def test_page_query_windows_pages(query: dict[str, str], window: tuple[int, int]) -> None:
    assert PageQuery.model_validate(query).window() == window


@pytest.mark.parametrize(
    ("model", "query", "fields"),
    [
        (PageQuery, {"pageSize": "101", "page": "0"}, {"pageSize", "page"}),
        (PageQuery, {"limit": "5"}, {"limit"}),
        (Pagination, {"limit": "0", "offset": "-1"}, {"limit", "offset"}),
        (Pagination, {"pageSize": "1000"}, {"pageSize"}),
    ],
    ids=["page-query-bounds", "page-query-has-no-limit", "pagination-bounds", "pagination-page-size"],
)
def test_out_of_range_or_unknown_parameters_are_a_422_naming_them(
    model: type[PageQuery] | type[Pagination], query: dict[str, str], fields: set[str]
) -> None:
    with pytest.raises(ValidationFailed) as raised:
        parse_model(model, query)
    assert {item["field"] for item in raised.value.details} == fields
