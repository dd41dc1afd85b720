"""Results and images as they cross the ROS boundary: sensor_msgs images <-> arrays (`images`),
predictions -> InstanceSegmentation (`instances`), the ROS-free layout rules (`mask_layout`:
boxes, cropped masks, the mono16 label image), ids stable across frames (`tracking`) and the
overlay (`overlay`). Shared by the node and annotate-bag; only `instances`, and `images` when
it builds an outgoing message, need rclpy."""
