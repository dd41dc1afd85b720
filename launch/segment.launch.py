"""Start instructsam_ros segment_node: `ros2 launch instructsam_ros segment.launch.py`.

Examples:
  ros2 launch instructsam_ros segment.launch.py image:=/camera/color/image_raw
  ros2 launch instructsam_ros segment.launch.py namespace:=front image:=/front/image_raw/compressed \
      use_compressed:=true device:=cuda:0 threshold:=0.4
Then publish an instruction (latched):
  ros2 topic pub --once --qos-durability transient_local <namespace>/instruction std_msgs/String \
      "data: 'segment the cups'"

Every process of the pipeline should use the same Fast DDS large-data profile (the camera
driver too): `fastdds_profile` is exported for this launch under the name this distribution's
Fast DDS reads (FASTDDS_DEFAULT_PROFILES_FILE on Kilted, FASTRTPS_DEFAULT_PROFILES_FILE on Humble
and Jazzy). For frames over 16 MiB (3840x2160 rgb8 and larger) pass
config/fastdds_large_frames.xml.
Parameters not exposed as launch arguments are in config/segment_node.yaml (`params_file`).
Kept thin on purpose: everything it sets is a parameter the node declares (tested).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from instructsam_ros.dds_profile import profile_variables


def generate_launch_description():
    config = PathJoinSubstitution([FindPackageShare("instructsam_ros"), "config"])
    arguments = [
        DeclareLaunchArgument("model", default_value="default", description="model directory, or 'default' (embedded model)"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda, cuda:N"),
        DeclareLaunchArgument("sam3_config", default_value="", description="directory with SAM3's config.json (empty: the model's own)"),
        DeclareLaunchArgument("image", default_value="image", description="input image topic (remaps 'image' and 'image/compressed')"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics (one per camera)"),
        DeclareLaunchArgument("use_compressed", default_value="false", description="subscribe to <image>/compressed"),
        DeclareLaunchArgument("threshold", default_value="0.3", description="minimum instance score"),
        DeclareLaunchArgument("autostart", default_value="true", description="configure and activate on start"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([config, "segment_node.yaml"]), description="parameter YAML"),
        DeclareLaunchArgument("fastdds_profile", default_value=PathJoinSubstitution([config, "fastdds_large_data.xml"]), description="Fast DDS profile: fastdds_large_data.xml (16 MiB messages) or fastdds_large_frames.xml (64 MiB)"),
    ]
    image = LaunchConfiguration("image")
    node = Node(
        package="instructsam_ros",
        executable="segment_node",
        name="segment_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model": LaunchConfiguration("model"),
                "device": LaunchConfiguration("device"),
                "sam3_config": LaunchConfiguration("sam3_config"),
                "use_compressed": LaunchConfiguration("use_compressed"),
                "threshold": LaunchConfiguration("threshold"),
                "autostart": LaunchConfiguration("autostart"),
            },
        ],
        remappings=[("image", image), ("image/compressed", [image, "/compressed"])],
    )
    return LaunchDescription(
        [
            *arguments,
            *[SetEnvironmentVariable(name, LaunchConfiguration("fastdds_profile")) for name in profile_variables()],
            node,
        ]
    )
