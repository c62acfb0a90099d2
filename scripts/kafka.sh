#!/usr/bin/env bash
# A single-node Kafka 4 broker in KRaft mode on 127.0.0.1, from Maven Central jars. No docker.
#
#   scripts/kafka.sh up   [TOPIC [PARTITIONS]]   fetch jars once, format, start, create the topic
#   scripts/kafka.sh down                        stop the broker (its data stays for `up`)
#   scripts/kafka.sh stop | start                stop / restart the broker, keeping its data
#   scripts/kafka.sh wipe                        stop and delete its data
#
# Environment: KAFKA_HOME (default .kafka), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093).
# The same script is used by `make kafka-up`, the tests and CI.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
home=${KAFKA_HOME:-$here/.kafka}
port=${KAFKA_PORT:-9092}
cport=${KAFKA_CONTROLLER_PORT:-9093}
jars=$here/.kafka-jars
data=$home/data
pidfile=$home/broker.pid
props=$home/server.properties
cp_="$jars/*"

fetch() {
    [[ -f $jars/.fetched ]] && return
    rm -rf "$jars.partial"
    mvn -q -B -f "$here/build/kafka-broker.pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$jars.partial"
    rm -rf "$jars" && mv "$jars.partial" "$jars" && touch "$jars/.fetched"
}

configure() {
    mkdir -p "$home"
    cat > "$props" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data
num.partitions=4
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
    cat > "$home/log4j2.properties" <<'LOG'
rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
LOG
}

running() { [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
    running && return
    configure
    if [[ ! -f $data/meta.properties ]]; then
        java -cp "$cp_" -Dlog4j2.configurationFile="$home/log4j2.properties" kafka.tools.StorageTool \
            format -t "$(java -cp "$cp_" kafka.tools.StorageTool random-uuid)" -c "$props" --standalone >/dev/null
    fi
    nohup java -Xms256m -Xmx512m -cp "$cp_" -Dlog4j2.configurationFile="$home/log4j2.properties" \
        kafka.Kafka "$props" >"$home/broker.log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 120); do
        if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
            topics --list >/dev/null 2>&1 && { echo "kafka up on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return; }
        fi
        running || { cat "$home/broker.log" >&2; echo "kafka failed to start" >&2; exit 1; }
        sleep 0.5
    done
    echo "kafka did not answer on 127.0.0.1:$port in 60 s; see $home/broker.log" >&2
    exit 1
}

stop() {
    if running; then
        pid=$(cat "$pidfile")
        kill "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
        echo "kafka stopped"
    fi
    rm -f "$pidfile"
}

topics() {
    java -cp "$cp_" -Dlog4j2.configurationFile="$home/log4j2.properties" \
        org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" "$@"
}

case ${1:-} in
    up)
        fetch; start
        topic=${2:-events}; partitions=${3:-4}
        topics --create --if-not-exists --topic "$topic" --partitions "$partitions" --replication-factor 1 >/dev/null
        echo "topic $topic ($partitions partitions)";;
    start) fetch; start;;
    down|stop) stop;;
    wipe) stop; rm -rf "$home";;
    topics) shift; topics "$@";;
    *) sed -n '2,10p' "$0" >&2; exit 2;;
esac
