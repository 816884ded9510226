# python3 -m mqttc ... (with lib/ on the path, or installed)
from mqttc import run

run()
