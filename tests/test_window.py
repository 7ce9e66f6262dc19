"""--window parsing: dates, date-times, zones, open ends."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fsaudit.window import WindowError, parse_window, target_timezone

TZ = timezone(timedelta(hours=2))


def test_dates_cover_whole_days_in_the_target_zone():
    window = parse_window("2014-06-02..2014-06-07", TZ)
    assert window.start == datetime(2014, 6, 2, tzinfo=TZ)
    assert window.end == datetime(2014, 6, 8, tzinfo=TZ)
    assert window.contains(datetime(2014, 6, 7, 23, 59, tzinfo=TZ).timestamp())
    assert not window.contains(datetime(2014, 6, 8, 0, 0, tzinfo=TZ).timestamp())


def test_a_zone_given_wins_over_the_target_zone():
    window = parse_window("2014-06-02T10:00Z..2014-06-02T12:30:00+02:00", TZ)
    assert window.start == datetime(2014, 6, 2, 10, tzinfo=timezone.utc)
    assert window.end == datetime(2014, 6, 2, 10, 30, tzinfo=timezone.utc)


def test_an_open_end_means_until_now():
    now = datetime(2020, 1, 1, tzinfo=timezone.utc)
    window = parse_window("2019-12-31..", TZ, now=now)
    assert window.end == now


def test_a_single_date_is_that_day():
    window = parse_window("2014-06-02", TZ)
    assert window.end - window.start == timedelta(days=1)


@pytest.mark.parametrize("text", ["", "yesterday..today", "2014-06-07..2014-06-02", "2014-13-01..", "10:00"])
def test_bad_windows_are_usage_errors(text):
    with pytest.raises(WindowError):
        parse_window(text, TZ)


def test_the_target_zone_comes_from_the_root(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "localtime").write_bytes(Path("/usr/share/zoneinfo/Asia/Tokyo").read_bytes())
    zone = target_timezone(str(tmp_path))
    assert datetime(2014, 6, 2, tzinfo=zone).utcoffset() == timedelta(hours=9)


def test_an_absolute_localtime_link_resolves_inside_the_root(tmp_path):
    zoneinfo = tmp_path / "usr" / "share" / "zoneinfo" / "Image"
    zoneinfo.mkdir(parents=True)
    (zoneinfo / "Only").write_bytes(Path("/usr/share/zoneinfo/Asia/Tokyo").read_bytes())
    (tmp_path / "etc").mkdir()
    # A zone that exists only in the image: followed on this machine, the link names nothing.
    (tmp_path / "etc" / "localtime").symlink_to("/usr/share/zoneinfo/Image/Only")
    zone = target_timezone(str(tmp_path))
    assert datetime(2014, 6, 2, tzinfo=zone).utcoffset() == timedelta(hours=9)
