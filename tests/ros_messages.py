"""ROS messages as ika mqtt_client publishes them, serialized by PyPI's rosbags (no ROS
installed): for ROS 1 (agv-1) and ROS 2 CDR (agv-2), a std_msgs/String, a stamped
sensor_msgs/BatteryState, a geometry_msgs/PoseStamped and a custom fleet_msgs/Mission.
Each comes with its type announcement (mqtt_client/RosMsgType) for
mqtt_client/ros_msg_type/<topic>. ROS 2 bridges announce only the name, so the ROS 2
definitions are written as .msg files under the directory given, as a robot has them.
Prints one "<topic> <hex payload>" line per message, the announcement first."""
import sys, os
import numpy as np
from rosbags.typesys import Stores, get_typestore, get_types_from_msg

MISSION = "string mission_id\nstring status\nuint32 step\ngeometry_msgs/Point[] waypoints\n{time} started\n"
ANNOUNCE = "string md5\nstring name\nstring definition\nbool stamped\n"
msg_dir, = sys.argv[1:]
out = []

def emit(topic, data):
    out.append(f"{topic} {bytes(data).hex()}")

for ros2, device in [(False, "agv-1"), (True, "agv-2")]:
    ts = get_typestore(Stores.ROS2_HUMBLE if ros2 else Stores.ROS1_NOETIC)
    types = get_types_from_msg(MISSION.format(time="builtin_interfaces/Time" if ros2 else "time"), "fleet_msgs/msg/Mission")
    types.update(get_types_from_msg(ANNOUNCE, "mqtt_client/msg/RosMsgType"))
    ts.register(types)
    T = ts.types
    ser = ts.serialize_cdr if ros2 else ts.serialize_ros1
    Time = T["builtin_interfaces/msg/Time"]
    if ros2:
        Header = lambda s, f: T["std_msgs/msg/Header"](stamp=Time(sec=s, nanosec=5), frame_id=f)
    else:
        Header = lambda s, f: T["std_msgs/msg/Header"](seq=4, stamp=Time(sec=s, nanosec=5), frame_id=f)
    Point = T["geometry_msgs/msg/Point"]
    msgs = {
        "say": ("std_msgs/msg/String", T["std_msgs/msg/String"](data="docking"), False),
        "battery": ("sensor_msgs/msg/BatteryState", T["sensor_msgs/msg/BatteryState"](
            header=Header(1700000000, "base"), voltage=24.5, temperature=float("nan"), current=-1.5, charge=10.0,
            capacity=20.0, design_capacity=20.0, percentage=0.5, power_supply_status=2, power_supply_health=1,
            power_supply_technology=2, present=True, cell_voltage=np.array([3.5, 3.75], dtype=np.float32),
            cell_temperature=np.array([], dtype=np.float32), location="slot-1", serial_number="B-42"), True),
        "pose": ("geometry_msgs/msg/PoseStamped", T["geometry_msgs/msg/PoseStamped"](
            header=Header(1700000001, "map"),
            pose=T["geometry_msgs/msg/Pose"](position=Point(x=1.5, y=-2.0, z=0.0),
                orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))), False),
        "mission": ("fleet_msgs/msg/Mission", T["fleet_msgs/msg/Mission"](
            mission_id=f"{device}-m7", status="completed", step=3, waypoints=[Point(x=1.0, y=2.0, z=0.0), Point(x=3.0, y=4.0, z=0.0)],
            started=Time(sec=1700000002, nanosec=0)), False),
    }
    for key, (typename, msg, stamped) in msgs.items():
        topic = f"ros/{device}/{key}"
        definition, md5 = ts.generate_msgdef(typename, ros_version=2 if ros2 else 1)
        short = typename.replace("/msg/", "/")
        # ROS 2 bridges announce the name only; their .msg files are on the robot.
        if ros2:
            sections = definition.split("=" * 80 + "\n")
            for i, sec in enumerate(sections):
                name = typename if i == 0 else sec.splitlines()[0][len("MSG: "):]
                body = sec if i == 0 else "\n".join(sec.splitlines()[1:]) + "\n"
                pkg, _, ty = name.replace("/msg/", "/").partition("/")
                os.makedirs(f"{msg_dir}/{pkg}/msg", exist_ok=True)
                with open(f"{msg_dir}/{pkg}/msg/{ty}.msg", "w") as f:
                    f.write(body)
            ann = T["mqtt_client/msg/RosMsgType"](md5="", name=typename, definition="", stamped=stamped)
        else:
            ann = T["mqtt_client/msg/RosMsgType"](md5=md5, name=short, definition=definition, stamped=stamped)
        data = bytes(ser(msg, typename))
        if stamped:
            data = bytes(ser(Time(sec=1700000009, nanosec=1), "builtin_interfaces/msg/Time")) + data if ros2 \
                else (1700000009).to_bytes(4, "little") + (1).to_bytes(4, "little") + data
        emit("mqtt_client/ros_msg_type/" + topic, ser(ann, "mqtt_client/msg/RosMsgType"))
        emit(topic, data)
print("\n".join(out))
