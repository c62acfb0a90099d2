#!/usr/bin/env bash
# Fetch the JVM jars the Spark session needs (Delta Lake, Kafka source) from Maven Central
# into .jars/, dropping any artifact that pip's pyspark already ships (so the classpath
# never holds two versions of jackson, parquet, hadoop, ...).
# Usage: scripts/fetch-jars.sh PYTHON DEST
set -euo pipefail
python=${1:-.venv/bin/python}
dest=${2:-.jars}
here=$(cd "$(dirname "$0")/.." && pwd)
spark_jars=$("$python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mvn -q -B -f "$here/build/spark-jars.pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp"

artifact() { basename "$1" .jar | sed -E 's/-[0-9][0-9A-Za-z.+-]*$//'; }
declare -A shipped=()
for j in "$spark_jars"/*.jar; do shipped[$(artifact "$j")]=1; done

mkdir -p "$dest.partial"
rm -f "$dest.partial"/*.jar
for j in "$tmp"/*.jar; do
    [[ -n "${shipped[$(artifact "$j")]:-}" ]] || cp "$j" "$dest.partial/"
done
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "fetched $(ls "$dest" | wc -l) jars into $dest"
