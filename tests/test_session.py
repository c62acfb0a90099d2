"""The session factory's class archive option (``make setup`` makes the archive)."""

from pipelines.session import class_archive


def test_the_class_archive_is_mapped_only_when_it_is_there_and_not_named_already(tmp_path):
    archive = tmp_path / "spark-classes.jsa"
    assert class_archive("", archive) == ""  # not made (a JDK that cannot): no option
    archive.write_bytes(b"\0")
    assert class_archive("", archive) == f"-XX:SharedArchiveFile={archive}"
    assert class_archive("-XX:TieredStopAtLevel=1", archive) == f"-XX:SharedArchiveFile={archive}"
    # The run that makes the archive names its own; a user's own archive wins too.
    assert class_archive("-XX:ArchiveClassesAtExit=/tmp/x.jsa", archive) == ""
    assert class_archive("-XX:SharedArchiveFile=/elsewhere.jsa", archive) == ""
