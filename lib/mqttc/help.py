# The mqttc reference, printed by `mqttc --help` and repeated in README.md (a test keeps
# the two and the option table in step).  Its own module: it is only loaded for --help.
HELP = """usage: mqttc pub {-t TOPIC | -L URL} {-m MSG | -f FILE | -l | -s | -n} [options]
       mqttc sub {-t FILTER ... | -L URL} [options]
       mqttc --help | --version
MQTT 3.1.1 client in the style of mosquitto_pub / mosquitto_sub.

connection (pub and sub):
  -h, --host HOST         broker host (127.0.0.1)
  -p, --port PORT         broker port (1883; 8883 with --cafile/--capath or mqtts://)
  -L, --url URL           mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC
  -i, --id ID             client id (default: mqttc- and 12 random hex digits)
  -I, --id-prefix PREFIX  client id: PREFIX and 12 random hex digits
  -k, --keepalive SECONDS keepalive, 0 to 65535 (60); 0 disables it
  -c, --disable-clean-session
                          persistent session (needs -i): keep going across connection
                          loss, re-connecting with back-off and resending (3.1.1 4.4)
  -u, --username USER     user name
  -P, --pw, --password PASSWORD
                          password (needs -u)
  -V, --protocol-version mqttv311
                          MQTT 3.1.1 is the only version
  -M, --max-inflight N    QoS 1/2 messages in flight at once (16)
  --will-topic TOPIC      last will: published by the broker if mqttc vanishes
  --will-payload MSG      will payload (empty); --will-qos 0|1|2 (0); --will-retain
  --max-packet BYTES      largest packet accepted from the broker (K/M suffix allowed);
                          default: the MQTT limit on CPython, what the heap allows on
                          MicroPython; a bigger one ends the command
  --nodelay               accepted for mosquitto compatibility (always on)
  -d, --debug             log every packet sent and received on stderr
  --quiet                 no error or status lines on stderr (exit status only)
TLS (on with --cafile, --capath or an mqtts:// URL):
  --cafile FILE           CA certificate(s) (PEM) that signed the broker's certificate
  --capath DIR            a directory of CA certificates (PEM files)
  --cert FILE, --key FILE client certificate and its private key (PEM)
  --insecure              do not check the broker's host name against its certificate
store (a flash ring file: QoS 1/2 messages survive a crash, kill or Ctrl-C):
  --store PATH            keep unacknowledged messages in the ring file PATH (created
                          if missing); `pub --store PATH -i ID -c` with no message
                          option sends what an earlier run left in it, then exits
  --store-size BYTES      ring size, whole 4096-byte sectors, at least 12288 (32768);
                          an existing ring never shrinks
  --store-capacity N      messages the ring holds at once (64); a message with its
                          topic may be at most about 4 KB in the ring
pub:
  -t, --topic TOPIC       topic to publish to (no wildcards)
  -m, --message MSG       the message
  -f, --file FILE         the contents of FILE as the message
  -l, --stdin-line        each line of stdin is a message (an empty line is empty)
  -s, --stdin-file        all of stdin is the message
  -n, --null-message      a zero-length message
  -q, --qos 0|1|2         QoS (0)
  -r, --retain            retain the message
  --repeat N              publish the message N times (-m, -f, -s, -n)
  --repeat-delay SECONDS  wait between repeats (fractions allowed)
sub:
  -t, --topic FILTER      filter to subscribe to (repeatable)
  -q, --qos 0|1|2         QoS of the subscriptions (0)
  -C COUNT                exit after COUNT messages
  -W SECONDS              exit with status 27 after SECONDS
  -E                      exit once the subscriptions are acknowledged
  -U, --unsubscribe FILTER
                          unsubscribe from FILTER after subscribing (repeatable)
  -T, --filter-out FILTER do not print messages whose topic matches (repeatable)
  -R                      do not print retained (stale) messages
  -v, --verbose           print `topic payload`
  -N                      no newline after each message
  -F FORMAT               print with FORMAT: %t topic, %p payload, %l length,
                          %q QoS, %r retained, %m 0 (no packet id), %x/%X hex payload,
                          %U Unix time, %I ISO 8601 time, %j/%J JSON, %% a percent
                          sign; @Y @m @d @H @M @S date and time; \\n \\t \\e \\0 \\a \\r
                          \\v \\\\ escapes
exit status: 0 success; 1-5 the broker refused the connection (CONNACK return code);
  6 usage; 7 connection (broker unreachable or lost, acks not received in time);
  8 TLS; 9 protocol violation by the broker; 10 store; 11 subscription refused;
  12 internal error; 27 sub -W expired; 130 interrupted (Ctrl-C)."""
